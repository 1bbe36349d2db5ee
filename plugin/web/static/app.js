// The search page's behaviour: impression and click events for the session, "more" results,
// similar products on demand, and grading results. The page works without it (server-rendered);
// this only adds to it. No library, no CDN.
"use strict";

(function () {
  const sessionId = document.body.dataset.sessionId;

  function status(text) {
    const box = document.getElementById("status");
    if (box) box.textContent = text;
  }

  function postEvents(events) {
    // keepalive: a click's event still goes out when the link's page replaces this one.
    return fetch("/events", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ events: events }),
      keepalive: true,
    }).then(function (response) {
      if (!response.ok) status("events not recorded: HTTP " + response.status);
      return response;
    }).catch(function (error) { status("events not recorded: " + error); });
  }

  function impression(list, items) {
    if (!sessionId || !list.dataset.requestId || items.length === 0) return;
    postEvents([{
      type: "impression",
      session_id: sessionId,
      timestamp: new Date().toISOString(),
      request_id: list.dataset.requestId,
      query: list.dataset.query,
      items: items.map(function (li) {
        return { product_id: li.dataset.productId, position: Number(li.dataset.position) };
      }),
    }]);
  }

  function onResultClick(event) {
    const link = event.target.closest(".result-link");
    if (!link) return;
    const item = link.closest("li.result");
    const list = item.closest("[data-request-id]");
    postEvents([{
      type: "click",
      session_id: sessionId,
      timestamp: new Date().toISOString(),
      product_id: item.dataset.productId,
      position: Number(item.dataset.position),
      request_id: list ? list.dataset.requestId : undefined,
    }]);
  }

  function loadSimilar(details) {
    const box = details.querySelector("[data-similar-url]");
    if (!details.open || !box || box.dataset.loaded) return;
    box.dataset.loaded = "1";
    fetch(box.dataset.similarUrl).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) { box.innerHTML = html; })
      .catch(function (error) { box.textContent = "similar products unavailable: " + error; });
  }

  function more(event) {
    const link = event.target.closest("#more");
    if (!link) return;
    event.preventDefault();
    link.setAttribute("aria-busy", "true");
    fetch(link.dataset.fragment).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      const holder = document.createElement("div");
      holder.innerHTML = html;
      const fragment = holder.querySelector("ol");
      const added = Array.from(fragment.querySelectorAll("li.result"));
      const results = document.getElementById("results");
      added.forEach(function (li) {
        li.dataset.requestId = fragment.dataset.requestId;
        results.appendChild(li);
      });
      impression(fragment, added);
      const shown = results.querySelectorAll("li.result").length;
      history.replaceState(null, "", link.href);
      if (added.length === 0 || shown >= 100 || shown % 10 !== 0) {
        link.remove();
      } else {
        link.href = link.href.replace(/([?&]k=)\d+/, "$1" + Math.min(shown + 10, 100));
        link.dataset.fragment = link.dataset.fragment
          .replace(/([?&]k=)\d+/, "$1" + Math.min(shown + 10, 100))
          .replace(/([?&]offset=)\d+/, "$1" + shown);
        link.removeAttribute("aria-busy");
      }
      if (added[0]) added[0].querySelector(".result-link").focus();
      status(added.length + " more results");
    }).catch(function (error) { status("more results unavailable: " + error); });
  }

  function grade(event) {
    const button = event.target.closest(".grade-button");
    if (!button) return;
    const box = button.closest(".judge");
    const keyField = document.getElementById("admin-key");
    const key = keyField ? keyField.value : "";
    if (key) sessionStorage.setItem("shoprank-admin-key", key);
    fetch("/ui/judgments", {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": key },
      body: JSON.stringify({
        query: box.dataset.query, product_id: box.dataset.productId,
        grade: Number(button.dataset.grade),
      }),
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.detail || ("HTTP " + response.status));
        return body;
      });
    }).then(function (saved) {
      box.querySelectorAll(".grade-button").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === button));
      });
      box.dataset.saved = String(saved.grade);
      status("saved grade " + saved.grade + " for " + saved.product_id + " (" + saved.qid + ")");
    }).catch(function (error) { status("grade not saved: " + error.message); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const keyField = document.getElementById("admin-key");
    const stored = sessionStorage.getItem("shoprank-admin-key");
    if (keyField && stored) keyField.value = stored;
    const results = document.getElementById("results");
    if (results) {
      const items = Array.from(results.querySelectorAll("li.result"));
      items.forEach(function (li) { li.dataset.requestId = results.dataset.requestId; });
      impression(results, items);
    }
    document.querySelectorAll("details.similar").forEach(function (details) {
      details.addEventListener("toggle", function () { loadSimilar(details); });
    });
    document.addEventListener("click", onResultClick);
    document.addEventListener("click", more);
    document.addEventListener("click", grade);
  });
})();
