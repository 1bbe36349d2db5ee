"""Session personalisation on SIMULATED clicks: nDCG@10 uplift with paired-bootstrap 95% CIs.

No public click log with a usable licence exists, so the clicks are simulated from the human
relevance judgments of the shared catalogs (`bench/click_sim.py` documents the click model, the
simulated users and how sessions are drawn). Per catalog and condition, each session:

1. issues its history searches (plain ranking, ``personalize=False``, so that every weight
   sees the same clicks), sends an impression of the top 10 and the clicks (with their
   positions and the search's ``request_id``), add-to-carts and purchases the position-based
   model draws for the user, through `plugin.events.EventRecorder`;
2. runs the evaluation search twice on the same session state, ``personalize=False`` and
   ``personalize=True`` (once per ``--weights`` value, set on
   ``pipeline.settings.personalization_weight``), and scores both with the user's own gains
   (`bench.click_sim.user_ndcg`).

The uplift is personalised minus plain nDCG@10, averaged over sessions with a paired-bootstrap
95% CI (`reranker.metrics.paired_bootstrap`, resampling sessions). Sessions whose history
drew no click stay in (their uplift is 0); beside it, the uplift over the sessions whose
history shows the intent (it has clicks and, for a user with an intent, at least half of them
on products matching it). A brand-new session must get exactly the plain ranking: checked
on every one.

Hybrid retrieval (RRF) with the default candidates, no cross-encoder, no learned final stage,
no fairness step, in-memory session store.

    SHOPRANK_HOME=... python3 -m bench.personalization --catalog both [--sessions 400] \
        [--seed 0] [--weights 0.1,0.3,0.5,1.0] [--json-out FILE] [--md-out FILE]

Uses the eval indexes of bench/relevance.sh (eval-esci-us, eval-icecat) and builds one that
is missing. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.click_sim import (
    ATTRACTIVENESS,
    BETA,
    CART_AFTER_CLICK,
    CONDITIONS,
    ETA,
    HISTORY_SEARCHES,
    PURCHASE_AFTER_CART,
    UNJUDGED_ATTRACTIVENESS,
    ClickModel,
    Condition,
    ProductFacts,
    SessionPlan,
    SessionPlanner,
    session_rng,
    user_gains,
    user_ndcg,
)
from bench.machine import cpu_model, percentile
from indexer.catalog import load_catalog
from indexer.indexing import reindex_catalog
from plugin.components import build_pipeline
from plugin.events import (
    AddToCartEvent,
    ClickEvent,
    EventRecorder,
    ImpressionEvent,
    ImpressionItem,
    PurchaseEvent,
)
from plugin.models import NO_FAIRNESS, SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from reranker.metrics import (
    ESCI_GAINS,
    Gains,
    PairedDifference,
    Qrels,
    load_qrels,
    load_queries,
    paired_bootstrap,
)

REPO = Path(__file__).resolve().parents[1]
CATALOGS = ("esci-us", "icecat")
K = 10
SIMULATED = (
    "**All clicks here are SIMULATED** (position-based click model over the human relevance "
    "judgments); no real shopper's behaviour was logged."
)
CONDITION_TEXT: dict[Condition, str] = {
    "brand": "brand intent: history on the brand's queries, scored with the user's gains",
    "price": "price-band intent (lower/upper third), scored with the user's gains",
    "no-history": "brand-new session, plain gains",
    "random-history": "history clicked without intent on random queries, plain gains",
    "other-intent": "a brand user's history, then another random query, plain gains",
}


@dataclass(frozen=True)
class HistoryClicks:
    """What one history search drew: engagements (clicks, carts, purchases), clicks, and the
    clicks on products matching the click intent."""

    engagements: int
    clicks: int
    on_intent: int


@dataclass
class SessionOutcome:
    """One simulated session's history and its evaluation search."""

    session_id: str
    plan: SessionPlan
    engagements: int
    clicks: int
    on_intent: int
    plain: float
    personalised: dict[float, float] = field(default_factory=dict)
    changed: dict[float, bool] = field(default_factory=dict)

    @property
    def shows_intent(self) -> bool:
        """The history has clicks, and (for a user with an intent) at least half of them
        went to products matching it: what the session reveals is consistent."""
        if self.plan.click_intent.kind == "none":
            return self.clicks > 0
        return self.clicks > 0 and 2 * self.on_intent >= self.clicks


@dataclass
class CatalogRun:
    """What the sessions of one catalog need."""

    name: str
    pipeline: SearchPipeline
    recorder: EventRecorder
    queries: Mapping[str, str]
    qrels: Qrels
    products: Mapping[str, ProductFacts]
    gains: Gains | None
    model: ClickModel
    latencies_ms: list[float] = field(default_factory=list)

    def search(self, query: str, session_id: str, personalize: bool) -> list[str]:
        response = self.pipeline.search(self._request(query, session_id, personalize))
        self.latencies_ms.append(response.timings_ms["total"])
        return [hit.id for hit in response.results]

    def _request(self, query: str, session_id: str, personalize: bool) -> SearchRequest:
        return SearchRequest(
            query=query, k=K, session_id=session_id, personalize=personalize, final=False,
            rerank=False, fairness=NO_FAIRNESS,
        )

    def history_search(
        self, session_id: str, qid: str, plan: SessionPlan, seed: int
    ) -> HistoryClicks:
        """One history search, its impression and the simulated engagements."""
        response = self.pipeline.search(self._request(self.queries[qid], session_id, False))
        self.latencies_ms.append(response.timings_ms["total"])
        ranking = [hit.id for hit in response.results]
        intent = plan.click_intent
        drawn = self.model.simulate(
            ranking, self.qrels[qid],
            lambda pid: intent.factor(self.products.get(pid, ProductFacts())),
            session_rng(seed, session_id, qid, 0),
        )
        now = datetime.now(UTC)
        kinds = {"click": ClickEvent, "add_to_cart": AddToCartEvent, "purchase": PurchaseEvent}
        events: list[Any] = [ImpressionEvent(
            type="impression", session_id=session_id, timestamp=now,
            request_id=response.request_id, query=self.queries[qid],
            items=[ImpressionItem(product_id=pid, position=i) for i, pid in enumerate(ranking, 1)],
        )]
        events += [
            kinds[e.kind](
                type=e.kind, session_id=session_id, timestamp=now, product_id=e.product_id,
                position=e.position, request_id=response.request_id,
            )
            for e in drawn
        ]
        self.recorder.record(events)
        clicked = [e.product_id for e in drawn if e.kind == "click"]
        on_intent = sum(
            intent.matches(self.products.get(pid, ProductFacts())) is True for pid in clicked
        )
        return HistoryClicks(len(drawn), len(clicked), on_intent)

    def session(
        self, condition: Condition, index: int, plan: SessionPlan, weights: Sequence[float],
        seed: int,
    ) -> SessionOutcome:
        session_id = f"sim-{self.name}-{condition}-{seed}-{index}"
        history = [self.history_search(session_id, qid, plan, seed) for qid in plan.history]
        engagements = sum(h.engagements for h in history)
        query = self.queries[plan.evaluation]
        gains = user_gains(
            self.qrels[plan.evaluation], self.products, plan.eval_intent, self.gains
        )
        plain = self.search(query, session_id, False)
        outcome = SessionOutcome(
            session_id, plan, engagements, sum(h.clicks for h in history),
            sum(h.on_intent for h in history), user_ndcg(plain, gains, K),
        )
        default = self.pipeline.settings.personalization_weight
        try:
            for weight in weights:
                self.pipeline.settings.personalization_weight = weight
                ranked = self.search(query, session_id, True)
                outcome.personalised[weight] = user_ndcg(ranked, gains, K)
                outcome.changed[weight] = ranked != plain
                if condition == "no-history" and ranked != plain:
                    raise SystemExit(
                        f"{self.name}: a brand-new session got a personalised ranking "
                        f"(weight {weight}, query {plan.evaluation})"
                    )
        finally:
            self.pipeline.settings.personalization_weight = default
        return outcome


def open_catalog(name: str, data: Path) -> CatalogRun:
    folder = data / name
    esci = name == "esci-us"
    settings = Settings(
        index=f"eval-{name}", final_ranker="none", reranker="none", session_store="memory",
    )
    pipeline = build_pipeline(settings)
    if not pipeline.store.exists():
        print(f"building index eval-{name} (first run only)", file=sys.stderr, flush=True)
        reindex_catalog(pipeline.store, folder / "products.jsonl.gz", pipeline.encoder)
    products = {
        p.id: ProductFacts(p.brand, p.price)
        for p in load_catalog(folder / "products.jsonl.gz").products
    }
    return CatalogRun(
        name=name,
        pipeline=pipeline,
        recorder=EventRecorder(pipeline.store, pipeline.session_store),
        queries=load_queries(folder / "queries.tsv"),
        qrels=load_qrels(folder / "qrels.txt"),
        products=products,
        gains=ESCI_GAINS if esci else None,
        model=ClickModel(),
    )


@dataclass(frozen=True)
class Row:
    condition: Condition
    weight: float
    sessions: int
    with_clicks: int
    shows_intent: int
    plain: float
    personalised: float
    uplift: PairedDifference
    uplift_shown: PairedDifference | None
    changed: int
    better: int
    worse: int

    def markdown(self, default: float) -> str:
        weight = f"{self.weight:g}" + (" (default)" if self.weight == default else "")
        clicked = "-" if self.uplift_shown is None else str(self.uplift_shown)
        return (
            f"| {self.condition} | {weight} | {self.sessions} | {self.with_clicks} "
            f"| {self.plain:.4f} | {self.personalised:.4f} | {self.uplift} "
            f"| {self.shows_intent} | {clicked} "
            f"| {self.changed} | {self.better} / {self.worse} |"
        )

    def summary(self) -> dict[str, Any]:
        def ci(d: PairedDifference | None) -> dict[str, float] | None:
            if d is None:
                return None
            return {"mean": round(d.mean, 5), "low": round(d.low, 5), "high": round(d.high, 5)}

        return {
            "condition": self.condition, "weight": self.weight, "sessions": self.sessions,
            "sessions_with_clicks": self.with_clicks,
            "sessions_history_shows_intent": self.shows_intent, "plain_ndcg": round(self.plain, 5),
            "personalised_ndcg": round(self.personalised, 5), "uplift": ci(self.uplift),
            "uplift_history_shows_intent": ci(self.uplift_shown),
            "top10_changed": self.changed, "better": self.better, "worse": self.worse,
        }


def rows_of(
    condition: Condition, outcomes: Sequence[SessionOutcome], weights: Sequence[float], seed: int
) -> list[Row]:
    plain = {o.session_id: o.plain for o in outcomes}
    clicked = [o for o in outcomes if o.shows_intent]
    rows = []
    for weight in weights:
        personal = {o.session_id: o.personalised[weight] for o in outcomes}
        with_clicks = None
        if clicked:
            with_clicks = paired_bootstrap(
                {o.session_id: o.plain for o in clicked},
                {o.session_id: o.personalised[weight] for o in clicked}, seed=seed,
            )
        rows.append(Row(
            condition, weight, len(outcomes), sum(o.clicks > 0 for o in outcomes), len(clicked),
            statistics.fmean(plain.values()), statistics.fmean(personal.values()),
            paired_bootstrap(plain, personal, seed=seed), with_clicks,
            sum(o.changed[weight] for o in outcomes),
            sum(o.personalised[weight] > o.plain for o in outcomes),
            sum(o.personalised[weight] < o.plain for o in outcomes),
        ))
    return rows


def bench_catalog(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Run every condition's sessions on one catalog: its Markdown section and summary."""
    started = time.perf_counter()
    run = open_catalog(name, args.data)
    run.pipeline.encoder.encode_query("warm up")
    planner = SessionPlanner(
        run.qrels, run.products, min_grade=2 if name == "esci-us" else 1, gains=run.gains
    )
    rows: list[Row] = []
    outcomes: dict[str, list[SessionOutcome]] = {}
    for condition in args.conditions:
        done = outcomes[condition] = []
        for index in tqdm(range(args.sessions), desc=f"{name} {condition}", file=sys.stderr,
                          leave=False):
            plan = planner.plan_session(condition, session_rng(args.seed, name, condition, index))
            done.append(run.session(condition, index, plan, args.weights, args.seed))
        rows += rows_of(condition, done, args.weights, args.seed)
    seconds = time.perf_counter() - started
    default = Settings().personalization_weight
    low, high = planner.price_intents()
    clicks = {
        condition: (sum(o.clicks for o in done), sum(o.on_intent for o in done))
        for condition, done in outcomes.items() if condition in ("brand", "price")
    }
    engaged = [o.engagements for done in outcomes.values() for o in done if o.plan.history]
    lines = [
        f"### {name}: {args.sessions} simulated sessions per condition",
        "",
        SIMULATED,
        "",
        f"- {len(planner.queries)} judged queries; {len(planner.brand_queries)} brands eligible "
        f"for a brand intent; price bands: {low.label} / {high.label} (thirds of the relevant "
        "judged products' prices)",
        f"- engagements per session with history: mean "
        f"{statistics.fmean(engaged) if engaged else 0:.2f} (clicks, carts and purchases)",
        *(f"- {condition} sessions: {on} of {total} history clicks "
          f"({on / max(total, 1):.0%}) on a product matching the intent"
          for condition, (total, on) in clicks.items()),
        f"- search latency over the run: p50 {percentile(run.latencies_ms, 50):.1f} ms, p95 "
        f"{percentile(run.latencies_ms, 95):.1f} ms ({len(run.latencies_ms)} searches); "
        f"catalog took {seconds:.0f} s",
        "",
        "| condition | weight | sessions | with clicks | plain nDCG@10 | personalised nDCG@10 "
        "| uplift [95% CI] | history shows intent | uplift there [95% CI] | top 10 changed "
        "| better / worse |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- |",
        *(row.markdown(default) for row in rows),
        "",
    ]
    return "\n".join(lines), {
        "catalog": name, "sessions_per_condition": args.sessions,
        "judged_queries": len(planner.queries), "brands": len(planner.brand_queries),
        "price_bands": [low.label, high.label],
        "history_clicks_on_intent": {c: {"clicks": t, "on_intent": o}
                                     for c, (t, o) in clicks.items()},
        "rows": [row.summary() for row in rows],
        "search_p50_ms": round(percentile(run.latencies_ms, 50), 2),
        "searches": len(run.latencies_ms), "seconds": round(seconds, 1),
    }


def header(args: argparse.Namespace, command: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    attractive = ", ".join(f"{g}: {a}" for g, a in sorted(ATTRACTIVENESS.items(), reverse=True))
    return "\n".join([
        "## Session personalisation on simulated clicks",
        "",
        SIMULATED,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average at start {load} (1/5/15 min; other jobs may share the machine).",
        "",
        "Click model (position-based): P(click at rank r) = 1/r^eta x attractiveness(grade) x "
        f"preference; eta = {ETA:g}; attractiveness by grade {attractive} (ESCI E/S/C/I = "
        f"3/2/1/0; Icecat 0-3), unjudged {UNJUDGED_ATTRACTIVENESS}; preference 1 on the user's "
        f"intent, beta = {BETA} off it ((1 + 2 beta)/3 for an unknown price); add to cart "
        f"{CART_AFTER_CLICK} x preference after a click, purchase {PURCHASE_AFTER_CART} after "
        f"a cart. History: {HISTORY_SEARCHES[0]}-{HISTORY_SEARCHES[1]} searches, shown the "
        "plain ranking. User gain = judged gain (ESCI E 1, S 0.1, C 0.01; Icecat 2^g - 1) x "
        "preference; nDCG@10's ideal is over the judged products' user gains. "
        f"Seed {args.seed}; uplift = personalised - plain nDCG@10, paired bootstrap over "
        "sessions (10,000 resamples).",
        "",
        "Conditions:",
        "",
        *(f"- {c}: {CONDITION_TEXT[c]}" for c in args.conditions),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", choices=[*CATALOGS, "both"], default="both")
    parser.add_argument("--sessions", type=int, default=400, help="per condition and catalog")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="0.1,0.3,0.5,1.0",
                        type=lambda text: [float(w) for w in text.split(",")])
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        type=lambda text: text.split(","))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--md-out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    unknown = [c for c in args.conditions if c not in CONDITIONS]
    if unknown or args.sessions < 1:
        parser.error(f"--conditions: choose from {','.join(CONDITIONS)}; --sessions >= 1")
    logging.basicConfig(level=logging.WARNING)
    command = " ".join(["python3 -m bench.personalization", *sys.argv[1:]])
    started = time.perf_counter()
    sections = [header(args, command)]
    print(sections[0], flush=True)
    names = CATALOGS if args.catalog == "both" else (args.catalog,)
    results = []
    for name in names:
        text, summary = bench_catalog(name, args)
        print(text, flush=True)
        sections.append(text)
        results.append(summary)
    seconds = time.perf_counter() - started
    load = [round(x, 2) for x in os.getloadavg()]
    sections.append(
        f"Run took {seconds:.0f} s; load average at the end {', '.join(map(str, load))}."
    )
    print(sections[-1], flush=True)
    if args.md_out is not None:
        args.md_out.parent.mkdir(parents=True, exist_ok=True)
        args.md_out.write_text("\n".join(sections) + "\n")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "simulated_clicks": True, "command": command, "cpu": cpu_model(),
            "seed": args.seed, "weights": args.weights, "catalogs": results,
            "seconds": round(seconds, 1), "load_average_after": load,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
