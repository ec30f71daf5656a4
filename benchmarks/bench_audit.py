"""Audit benchmarks, as ratios in one run (run on purpose; pytest never collects this file).

    python benchmarks/bench_audit.py [--size-gb 1.0] [--repeat 3] [--keep DIR]

(a) structure audit of a llava-1.5-7b-sized SHARDED safetensors checkpoint (686 keys, 14.1 GB
    logical) made of header-valid sparse files (headers written, files truncate()d to size: no
    data on disk), in a fresh process, without and with the config schema, against loading every
    shard with safetensors `load_file` in a fresh process;
(b) the --deep value scan of a REAL-data fp16 checkpoint of --size-gb against `dd` of the same
    files (cold = after posix_fadvise(DONTNEED), and warm) and against a naive per-tensor
    `torch.isfinite` on a subset, with the peak RSS (VmHWM) of each child process.

Cold numbers depend on the host: DONTNEED drops this VM's page cache, the hypervisor may still cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
SHARDS = 3

# ----------------------------------------------------------------------------- fixtures


def llava15_7b_shapes() -> tuple[dict[str, tuple[int, ...]], dict]:
    """On-disk keys and shapes of llava-1.5-7b as transformers 5 writes them (built on the meta device)."""
    import torch
    import transformers

    cfg = transformers.LlavaConfig(
        text_config=transformers.LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
        vision_config=transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                    num_attention_heads=16, image_size=336, patch_size=14,
                                                    projection_dim=768),
        image_token_index=32000,
    )
    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(cfg)
    shapes = {}
    for key, t in model.state_dict().items():
        for src, dst in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                         ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")):
            if key.startswith(src):
                shapes[dst + key[len(src):]] = tuple(t.shape)
                break
    return shapes, cfg.to_dict()


def _header(entries: list[tuple[str, tuple[int, ...]]], dtype: str = "F16", width: int = 2) -> tuple[bytes, int]:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in entries:
        n = int(np.prod(shape)) * width
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_sparse_sharded(directory: str, shapes: dict[str, tuple[int, ...]], config: dict) -> int:
    """Header-valid shards whose data regions are holes (truncate), plus index.json and config.json."""
    names = list(shapes)
    per = -(-len(names) // SHARDS)
    weight_map, total = {}, 0
    for i in range(SHARDS):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        head, size = _header([(n, shapes[n]) for n in part])
        with open(os.path.join(directory, fname), "wb") as f:
            f.write(head)
            f.truncate(len(head) + size)
        weight_map.update({n: fname for n in part})
        total += size
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return total


def write_real_fp16(directory: str, size_gb: float) -> tuple[int, int]:
    """A single fp16 safetensors file of ~size_gb of N(0, 0.02) values in llava-7b MLP shapes."""
    shape = (11008, 4096)
    per = int(np.prod(shape)) * 2
    count = max(1, round(size_gb * 1e9 / per))
    entries = [(f"language_model.model.layers.{i}.mlp.up_proj.weight", shape) for i in range(count)]
    head, size = _header(entries)
    rng = np.random.default_rng(0)
    chunk = 8 << 20  # elements
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(head)
        left = size // 2
        while left:
            n = min(chunk, left)
            f.write((rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float16).tobytes())
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return size + len(head), count


# ----------------------------------------------------------------------------- measuring


def drop_cache(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line; we add wall time and peak RSS."""
    wrapper = textwrap.dedent("""
        import json, sys, time
        _t0 = time.perf_counter()
        _out = {}
        exec(compile(sys.argv[1], "<bench>", "exec"))
        _out["inner_s"] = time.perf_counter() - _t0
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                _out["hwm_mb"] = int(line.split()[1]) / 1024
        print(json.dumps(_out))
    """)
    started = time.perf_counter()
    proc = subprocess.run([PY, "-c", wrapper, code, *args], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def cli(*args: str) -> dict:
    """`python -m llava_doctor ...` in a fresh process: wall time and the findings by code."""
    started = time.perf_counter()
    proc = subprocess.run([PY, "-m", "llava_doctor", *args], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"llava-doctor exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_s": wall, "findings": json.loads(proc.stdout)["summary"]["by_code"]}


def dd(path: str) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M"], check=True, capture_output=True)
    return time.perf_counter() - started


def best(values: list[float]) -> float:
    return min(values)


SCAN_CODE = """
from llava_doctor.artifacts.readers import open_checkpoint
from llava_doctor.scan import scan_checkpoint
r = scan_checkpoint(open_checkpoint(sys.argv[2]))
_out.update(scan_s=r.seconds, bytes=r.bytes_read, tensors=len(r.tensors))
"""

NAIVE_CODE = """
import torch
from safetensors import safe_open
n = int(sys.argv[3]); nbytes = 0
t1 = time.perf_counter()
with safe_open(sys.argv[2], "pt") as f:
    for key in list(f.keys())[:n]:
        t = f.get_tensor(key)
        bool(torch.isfinite(t).all()); bool(t.any())
        nbytes += t.numel() * t.element_size()
_out.update(scan_s=time.perf_counter() - t1, bytes=nbytes)
"""

LOAD_CODE = """
import glob
from safetensors.torch import load_file
n = 0
for shard in sorted(glob.glob(sys.argv[2] + "/*.safetensors")):
    n += len(load_file(shard))
_out.update(keys=n)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0, help="real-data file size for the --deep scan (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; the best is reported (default 3)")
    parser.add_argument("--naive-tensors", type=int, default=3, help="tensors the naive torch.isfinite pass reads")
    parser.add_argument("--keep", help="build the fixtures in this directory and keep them")
    args = parser.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="llava-doctor-bench-")
    sparse, real = os.path.join(work, "sparse7b"), os.path.join(work, "real")
    os.makedirs(sparse, exist_ok=True)
    os.makedirs(real, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    try:
        shapes, config = llava15_7b_shapes()
        logical = write_sparse_sharded(sparse, shapes, config)
        print(f"sparse llava-1.5-7b: {len(shapes)} keys, {logical / 1e9:.2f} GB logical, "
              f"{sum(os.stat(os.path.join(sparse, f)).st_blocks * 512 for f in os.listdir(sparse)) / 1e6:.1f} MB on disk")

        # (a) structure audit vs loading
        no_schema = [cli("audit", sparse, "--no-schema", "--format", "json") for _ in range(args.repeat)]
        with_schema = [cli("audit", sparse, "--format", "json") for _ in range(args.repeat)]
        loads = [child(LOAD_CODE, sparse) for _ in range(args.repeat)]
        t_no, t_with, t_load = (best([r["wall_s"] for r in rs]) for rs in (no_schema, with_schema, loads))
        rows += [
            ("structure audit, no schema (fresh process)", f"{t_no:.2f} s", "target < 1 s"),
            ("structure audit, with meta-device schema", f"{t_with:.2f} s", "target < 6 s"),
            ("safetensors load_file of every shard", f"{t_load:.2f} s", f"audit is {t_load / t_no:.1f}x faster"),
        ]
        print("findings (no schema):", no_schema[0]["findings"], " (with schema):", with_schema[0]["findings"])

        # (b) deep scan vs dd vs naive
        size, count = write_real_fp16(real, args.size_gb)
        path = os.path.join(real, "model.safetensors")
        gb = size / 1e9
        cold_dd, cold_scan, cold_cli = [], [], []
        for _ in range(args.repeat):
            drop_cache([path])
            cold_dd.append(dd(path))
            drop_cache([path])
            cold_scan.append(child(SCAN_CODE, real))
            drop_cache([path])
            cold_cli.append(cli("audit", real, "--deep", "--no-schema", "--select", "LD204,LD205", "--format", "json"))
        dd(path)
        warm_dd = [dd(path) for _ in range(args.repeat)]
        warm_scan = [child(SCAN_CODE, real) for _ in range(args.repeat)]
        warm_cli = [cli("audit", real, "--deep", "--no-schema", "--select", "LD204,LD205", "--format", "json")
                    for _ in range(args.repeat)]
        naive = child(NAIVE_CODE, path, str(args.naive_tensors))

        dd_cold = gb / best(cold_dd)
        scan_cold = gb / best([r["scan_s"] for r in cold_scan])
        dd_warm = gb / best(warm_dd)
        scan_warm = gb / best([r["scan_s"] for r in warm_scan])
        naive_rate = naive["bytes"] / 1e9 / naive["scan_s"]
        hwm = max(r["hwm_mb"] for r in cold_scan + warm_scan)
        rows += [
            (f"dd, cold ({gb:.2f} GB, {count} tensors)", f"{dd_cold:.2f} GB/s", ""),
            ("--deep scan, cold", f"{scan_cold:.2f} GB/s", f"{scan_cold / dd_cold:.0%} of dd (target >= 80%)"),
            ("dd, warm", f"{dd_warm:.2f} GB/s", ""),
            ("--deep scan, warm", f"{scan_warm:.2f} GB/s", f"{scan_warm / dd_warm:.0%} of dd (target >= 3 GB/s)"),
            (f"naive torch.isfinite per tensor ({args.naive_tensors} tensors, warm)", f"{naive_rate:.2f} GB/s",
             f"scan is {scan_warm / naive_rate:.1f}x faster"),
            ("--deep audit CLI end to end, cold / warm", f"{best([r['wall_s'] for r in cold_cli]):.2f} / "
             f"{best([r['wall_s'] for r in warm_cli]):.2f} s", "incl. imports"),
            ("peak RSS of the scan process (VmHWM)", f"{hwm:.0f} MB", "target < 300 MB"),
            ("peak RSS of the naive process (VmHWM)", f"{naive['hwm_mb']:.0f} MB", ""),
        ]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")
    print(f"(best of {args.repeat} runs each)")


if __name__ == "__main__":
    main()
