"""benchmarks/bench_export.py: the networks suite's summary and Markdown tables (the README's)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_export", ROOT / "benchmarks" / "bench_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(batch, threads, sparse, ort, fraction, seconds, rel):
    return {"batch": batch, "threads": threads, "to_sparse_s": seconds, "max_rel_diff": rel,
            "fraction_of_theoretical": fraction,
            "speedup_vs_torch_dense": {"torch_dense": 1.0, "prunelab_sparse": sparse, "onnxruntime_dense": ort}}


RESULT = {
    "setup": {"load_average_1_5_15_start": [0.5, 0.4, 0.3], "load_average_1_5_15_end": [1.25, 0.9, 0.5]},
    "results": {
        "mlp-1024 global s=0.9": {"theoretical_speedup": 10.0, "points": [
            _point(1, 1, 3.4, 1.4, 0.34, 0.07, 2e-7), _point(64, 1, 3.74, 1.2, 0.374, 0.2, 3e-7),
            _point(1, 2, 4.9, 1.5, 0.49, 0.1, 1e-7)]},
        "vgg16 layer s=0.95": {"theoretical_speedup": 17.5, "points": [
            _point(1, 1, 0.98, 2.0, 0.056, 8.5, 4e-6)]},
    },
}


def test_summary_finds_the_slowest_point_and_the_extremes():
    summary = _bench().networks_summary(RESULT["results"])
    assert summary == {"points": 4, "min_sparse_speedup": 0.98, "min_sparse_speedup_at": "vgg16 layer s=0.95 batch 1 threads 1",
                       "sparse_never_slower_than_dense": False, "max_rel_diff": 4e-6, "max_to_sparse_s": 8.5}


def test_markdown_has_one_table_per_thread_count(tmp_path):
    bench = _bench()
    text = bench.networks_markdown(RESULT)
    lines = text.splitlines()
    assert lines[0].startswith("**1 thread**") and "**2 threads**" in text
    assert "| mlp-1024 | global magnitude | 90% | 10.00× | 3.40× / 1.40× (0.34) | 3.74× / 1.20× (0.37) | 0.07 / 0.20 |" in lines
    # a thread count without a batch size leaves that cell empty
    assert "| mlp-1024 | global magnitude | 90% | 10.00× | 4.90× / 1.50× (0.49) |  | 0.10 /  |" in lines
    assert "| vgg16 | layer-wise, first layer dense | 95% | 17.50× | 0.98× / 2.00× (0.06) |  | 8.50 /  |" in lines
    assert lines[-1] == ("Slowest point: 0.98× (vgg16 layer s=0.95 batch 1 threads 1); largest output difference "
                         "4.0e-06 of the largest dense output; slowest `to_sparse` 8.50 s; load average at start / "
                         "end 0.5 / 1.25.")
    # --render writes the same tables from a saved JSON
    saved, out = tmp_path / "networks.json", tmp_path / "networks.md"
    saved.write_text(json.dumps(RESULT))
    assert bench.main(["--render", str(saved), "--markdown", str(out)]) == 0
    assert out.read_text() == text
