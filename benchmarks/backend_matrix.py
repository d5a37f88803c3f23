"""Score matrices of runs that differ only in their generation backend or dtype, cell by cell.

The runs must have trained the same adapters (training does not depend on the generation
backend): the script checks that every stage's adapter file is byte-identical across the runs,
then prints each run's matrix and the largest per-cell difference from the first run.

    ssr run configs/superni-sum-sa.yaml -o runs/backend/hf   --set generation.backend=hf   --set model.dtype=float32
    ssr run configs/superni-sum-sa.yaml -o runs/backend/vllm --set generation.backend=vllm --set model.dtype=float32
    python benchmarks/backend_matrix.py runs/backend/hf runs/backend/vllm [more runs ...]

The last line is `max_cell_difference: X` (ROUGE-L points, against the first run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def adapter_hashes(run: Path) -> dict[str, str]:
    """sha256 of every stage's adapter weights, by stage directory name."""
    return {p.parent.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.glob("stages/*/adapter/adapter_model.safetensors"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories; the first is the reference")
    args = ap.parse_args()
    results = {run: json.loads((run / "results.json").read_text()) for run in args.runs}
    reference = args.runs[0]
    hashes = {run: adapter_hashes(run) for run in args.runs}
    for run in args.runs[1:]:
        if hashes[run] != hashes[reference]:
            raise SystemExit(f"{run} trained other adapters than {reference}: the comparison would not isolate generation")
    tasks = results[reference]["tasks"]
    print(f"adapters identical across {len(args.runs)} runs ({len(hashes[reference])} stages)\n")
    print("| run | generation | dtype | " + " | ".join(f"row {i}: {t}" for i in range(len(results[reference]["scores"])) for t in tasks)
          + " | AR | BWT |")
    print("|---|---|---|" + "---:|" * (len(tasks) * len(results[reference]["scores"]) + 2))
    worst = 0.0
    for run, res in results.items():
        cells = [c for row in res["scores"] for c in row]
        ref_cells = [c for row in results[reference]["scores"] for c in row]
        worst = max([worst] + [abs(a - b) for a, b in zip(cells, ref_cells) if a is not None and b is not None])
        engines = res.get("engines", {})
        print(f"| {run} | {engines.get('generation', '?')} | {engines.get('generation_dtype', '?')} | "
              + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + f" | {res['AR']:.2f} | {res['BWT']:.2f} |")
    print(f"\nmax_cell_difference: {worst:.2f}")


if __name__ == "__main__":
    main()
