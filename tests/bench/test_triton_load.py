"""The GPU benchmark's arithmetic and its config variants, worked out by hand (the load itself
runs against a real Triton in bench/triton_gpu.sh)."""

from __future__ import annotations

import argparse

import pytest

from bench.triton_load import Variant, flops_per_pair, peak_tflops, utilisation

MINILM = {"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536}


def test_flops_per_pair_by_hand() -> None:
    # one layer, H=2, I=4, L=3: 8*3*4 + 4*3*2*4 + 4*9*2 = 96 + 96 + 72
    assert flops_per_pair({"num_hidden_layers": 1, "hidden_size": 2, "intermediate_size": 4},
                          3) == 264
    # MiniLM-L6 at 128 tokens: 6 x (151.0M + 302.0M + 25.2M), about 2.87 GFLOPs
    assert flops_per_pair(MINILM, 128) == 6 * (150_994_944 + 301_989_888 + 25_165_824)


def test_peaks_come_from_the_gpu_name_most_specific_first() -> None:
    assert peak_tflops(["NVIDIA H200"]) == {"fp16": 989.4, "fp32": 66.9}
    assert peak_tflops(["NVIDIA H100 PCIe"]) == {"fp16": 756.0, "fp32": 51.2}
    assert peak_tflops(["NVIDIA H200 NVL"]) == {"fp16": 835.0, "fp32": 60.0}
    assert peak_tflops(["NVIDIA A10G"]) is None
    assert peak_tflops([]) is None


def test_a_variant_changes_only_what_it_names() -> None:
    base = {"max_batch_size": 1024, "dynamic_batching": {"max_queue_delay_microseconds": 2000},
            "parameters": {"precision": {"string_value": "fp16"}}}
    plain = Variant.parse("fp32").config(base)
    assert plain["parameters"]["precision"] == {"string_value": "fp32"}
    assert plain["parameters"]["length_buckets"] == {"string_value": ""}  # earlier ones undone
    assert plain["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    tuned = Variant.parse("fp16+delay=0+buckets=64,128,256").config(base)
    assert tuned["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert tuned["parameters"]["length_buckets"] == {"string_value": "64,128,256"}
    assert base["parameters"] == {"precision": {"string_value": "fp16"}}  # not changed
    for bad in ("int8", "fp16+delay=soon", "fp16+buckets=a,b", "fp16+tensorrt"):
        with pytest.raises(argparse.ArgumentTypeError, match="fp"):
            Variant.parse(bad)


def test_utilisation_is_real_token_arithmetic_over_the_precisions_peak() -> None:
    data = {
        "arithmetic": {"flops_per_pair_real": 2e9, "flops_per_pair_padded": 3e9,
                       "peak_tflops": {"fp16": 1000.0, "fp32": 50.0}},
        "points": [{"precision": "fp16+buckets=64,128", "concurrency": 8, "pairs_per_s": 50_000},
                   {"precision": "fp32", "concurrency": 1, "pairs_per_s": 5_000}],
    }
    fp16, fp32 = utilisation(data)
    assert (fp16["tflops_real"], fp16["tflops_padded"]) == (100.0, 150.0)
    assert fp16["percent_of_peak"] == pytest.approx(10.0)
    assert fp32["percent_of_peak"] == pytest.approx(20.0)
    data["arithmetic"]["peak_tflops"] = None  # a machine PEAK_TFLOPS does not list
    assert utilisation(data)[0]["percent_of_peak"] is None
