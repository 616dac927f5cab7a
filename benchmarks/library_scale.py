"""The expert library at scale: bytes per expert, pre-filter recall, and LiveEdit's added time at real widths.

Usage (from the project root, after `make setup`; `pip install faiss-cpu` for the pre-filter):
    .venv/bin/python benchmarks/library_scale.py keys   [--archive PATH]   # real routing keys of the toy world
    .venv/bin/python benchmarks/library_scale.py bytes                     # bytes per expert, BLIP-2 / LLaVA width
    .venv/bin/python benchmarks/library_scale.py recall [--experts 1000000]
    .venv/bin/python benchmarks/library_scale.py speed  [--widths 2560 4096] [--experts 1000 100000 1000000]

Each prints one JSON object (and `keys` writes results/library_scale/keys.pt, which `recall` reads).

- keys: the default toy world's edits (eval + train records, one expert each) through a trained LiveEdit archive,
  and four input queries per record (the edit question, its text rephrase, its image rephrase, the unrelated
  multimodal-locality question), each with its input visual key and sentinel key.
- recall: a library of the real edit keys padded with noisy copies up to --experts; for every query the experts the
  exact hard filter keeps, and the candidates of the faiss pre-filter (re-checked exactly); recall = kept pairs the
  pre-filter path also keeps / kept pairs of the exact path.
- speed: per input at width d (BLIP-2-OPT-2.7B 2560 / 32 layers, LLaVA-7B 4096 / 32 layers; d_m 1024, k 4, r 4)
  LiveEdit's added time (input keys over a 600-token sequence, routing, applying the kept experts) against the
  decoder stack (one randomly initialised transformers decoder layer at that width and length, timed, times the
  layer count), and routing against one streaming read of the same key bytes timed in the same run.
All times are medians of --repeats runs on torch with --threads threads.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, InputKeys, LiveEditNetwork
from easyedit_liveedit.liveedit.storage import dtype_name

LOG = logging.getLogger("library_scale")
OUT = Path("results/library_scale")
QUERY_KINDS = ("edit", "rephrase", "image_rephrase", "m_loc")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of ``fn``."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(runs)


# ----------------------------------------------------------------------------------------- keys
@torch.no_grad()
def extract_keys(archive: str | None, batch: int = 64) -> dict[str, object]:
    """Edit keys and query keys of every eval and train record of the default toy world."""
    sys.path.insert(0, str(Path(__file__).parent))
    from liveedit_speed import batch_of, load_editor  # imports easyedit_liveedit, which shims EasyEdit first

    from easyedit_liveedit.toyworld.evaluate import ImageLoader

    prepare_multimodal_edit = importlib.import_module("easyeditor.evaluate.evaluate").prepare_multimodal_edit

    world, hparams, editor, archive = load_editor(archive)
    records = [r for split in ("vqa_eval", "vqa_train") for r in json.loads(world.split(split).read_text())]
    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    views = {  # query kind -> (prompt field, image field)
        "edit": ("src", "image"),
        "rephrase": ("rephrase", "image"),
        "image_rephrase": ("src", "image_rephrase"),
        "m_loc": ("m_loc_q", "m_loc"),
    }
    edit_phi, edit_psi = [], []
    queries: dict[str, dict[str, list]] = {kind: {"phi": [], "psi": [], "sentinel": []} for kind in views}
    start = time.perf_counter()
    for first in range(0, len(records), batch):
        chunk = records[first : first + batch]
        samples = batch_of(
            [prepare_multimodal_edit(hparams, tok, r["alt"], r["src"], load(r["image"])) for r in chunk]
        )
        experts = editor.make_experts(samples)
        edit_phi.append(experts.phi)
        edit_psi.append(experts.psi)
        for kind, (prompt, image) in views.items():
            samples = batch_of(
                [prepare_multimodal_edit(hparams, tok, r["alt"], r[prompt], load(r[image])) for r in chunk]
            )
            h, layout = editor.hidden_states(samples)
            keys = editor.net.input_keys(h, layout.image, layout.prompt)
            for name in ("phi", "psi", "sentinel"):
                queries[kind][name].append(getattr(keys, name))
    LOG.info("keys of %d records in %.0f s", len(records), time.perf_counter() - start)
    return {
        "archive": archive,
        "records": len(records),
        "edit_phi": torch.cat(edit_phi),
        "edit_psi": torch.cat(edit_psi),
        "queries": {kind: {name: torch.cat(v) for name, v in q.items()} for kind, q in queries.items()},
    }


# ----------------------------------------------------------------------------------------- bytes per expert
def bytes_per_expert(widths: dict[str, int], d_m: int = 1024, k: int = 4, r: int = 4, n: int = 1000) -> dict:
    """Bytes per expert in memory (``ExpertLibrary.bytes_per_expert``) and on disk (a saved folder / ``n``)."""
    import tempfile

    out = {}
    for name, d in widths.items():
        for dtype in (torch.float32, torch.bfloat16):
            library = ExpertLibrary(dtype=dtype)
            shapes = ((k, d_m), (k, d_m), (r, d), (r, d))
            library.add(Experts(*(torch.randn(n, *shape) for shape in shapes)))
            with tempfile.TemporaryDirectory() as folder:
                library.save(Path(folder) / "lib", {"width": d})
                disk = sum(p.stat().st_size for p in (Path(folder) / "lib").glob("shard-*"))
            out[f"{name} d={d} {dtype_name(dtype)}"] = {
                "memory_bytes": library.bytes_per_expert(),
                "memory_KiB": round(library.bytes_per_expert() / 1024, 2),
                "disk_KiB": round(disk / n / 1024, 2),
            }
    return out


# ----------------------------------------------------------------------------------------- recall
def padded_library(phi: torch.Tensor, n: int, sigma: float, seed: int = 0) -> ExpertLibrary:
    """The real edit keys, then noisy copies of them (``phi + sigma * N(0, 1)``) up to ``n`` experts (fp32, as the
    toy backbone runs; ``psi`` shares ``phi``'s tensor, ``U``/``V`` are 1x1: only the hard filter is measured)."""
    g = torch.Generator().manual_seed(seed)
    parts = [phi]
    total = len(phi)
    while total < n:
        take = min(len(phi), n - total)
        parts.append(phi[:take] + sigma * torch.randn(phi[:take].shape, generator=g))
        total += take
    keys = torch.cat(parts)
    library = ExpertLibrary()
    segment = {"ids": torch.arange(n), "key": torch.zeros(n, 16, dtype=torch.uint8), "psi": keys, "phi": keys,
               "U": torch.zeros(1, 1, 1).expand(n, 1, 1), "V": torch.zeros(1, 1, 1).expand(n, 1, 1)}  # fmt: skip
    library._replace([segment], removed=set(), next_id=n, frozen=True)  # used where it lies: no copy
    return library


def recall(keys_file: Path, n: int, sigma_rel: float, nlist: int, nprobes: list[int], queries: int) -> dict:
    """Pre-filter recall against exact routing on real toy keys padded with noisy copies (see module docstring)."""
    from easyedit_liveedit.index import FaissPrefilter

    data = torch.load(keys_file, weights_only=False)
    phi = data["edit_phi"]
    sigma = sigma_rel * float(phi.flatten(1).std(0).mean())
    library = padded_library(phi, n, sigma)
    g = torch.Generator().manual_seed(1)
    per_kind = max(1, queries // len(QUERY_KINDS))
    rows = torch.randperm(len(phi), generator=g)[:per_kind]
    q = data["queries"]
    keys = InputKeys(*(torch.cat([q[kind][f][rows] for kind in QUERY_KINDS]) for f in ("psi", "phi", "sentinel")),
                     has_image=torch.ones(per_kind * len(QUERY_KINDS), dtype=torch.bool))  # fmt: skip

    def one(b: int) -> InputKeys:
        return InputKeys(keys.psi[b : b + 1], keys.phi[b : b + 1], keys.sentinel[b : b + 1], keys.has_image[b : b + 1])

    def kept() -> tuple[list[set[int]], float]:
        start = time.perf_counter()
        sets = [{i for i, _ in library.route(one(b)).report()[0]} for b in range(len(keys))]
        return sets, 1e3 * (time.perf_counter() - start) / len(keys)

    exact, exact_ms = kept()
    total = sum(map(len, exact))
    result = {"experts": n, "real_edit_keys": len(phi), "key_width": phi[0].numel(), "noise_sigma": sigma,
              "noise_sigma_over_key_std": sigma_rel, "queries": len(keys), "query_kinds": QUERY_KINDS,
              "exact_kept_per_query_mean": total / len(keys),
              "exact_kept_per_query_median": statistics.median(map(len, exact)),
              "exact_route_ms_per_query": exact_ms, "prefilter": []}  # fmt: skip
    for kind in QUERY_KINDS:
        part = exact[QUERY_KINDS.index(kind) * per_kind : (QUERY_KINDS.index(kind) + 1) * per_kind]
        result[f"exact_kept_per_query_mean_{kind}"] = sum(map(len, part)) / len(part)
    start = time.perf_counter()
    prefilter = FaissPrefilter(nlist=nlist, nprobe=nprobes[0], train_size=40 * nlist, threads=torch.get_num_threads())
    library.set_prefilter(prefilter, min_experts=1)
    result["index_build_s"] = time.perf_counter() - start
    for nprobe in nprobes:
        prefilter._index.nprobe = nprobe
        got, ms = kept()
        found = sum(len(a & b) for a, b in zip(exact, got, strict=True))
        extra = sum(len(b - a) for a, b in zip(exact, got, strict=True))
        result["prefilter"].append({"index": f"IVF{nlist},Flat", "nprobe": nprobe, "recall": found / total,
                                    "kept_pairs_exact": total, "kept_pairs_found": found, "kept_not_in_exact": extra,
                                    "route_ms_per_query": ms})  # fmt: skip
        LOG.info("nprobe %d: recall %.4f, %.1f ms/query", nprobe, found / total, ms)
    return result


# ----------------------------------------------------------------------------------------- speed at real widths
BACKBONES = {  # hidden size -> (name, decoder layer builder, FFN width, heads, layers, image tokens)
    2560: ("BLIP-2-OPT-2.7B", "opt", 10240, 32, 32, 32),
    4096: ("LLaVA-1.5-7B", "llama", 11008, 32, 32, 576),
}


def decoder_layer_ms(d: int, seq: int, dtype: torch.dtype, repeats: int) -> float:
    """One randomly initialised decoder layer of the backbone's family at width ``d`` on ``seq`` tokens (no mask)."""
    from transformers import LlamaConfig, OPTConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    _, family, ffn, heads, _, _ = BACKBONES[d]
    h = torch.randn(1, seq, d, dtype=dtype)
    with torch.no_grad():
        if family == "opt":
            layer = OPTDecoderLayer(OPTConfig(hidden_size=d, ffn_dim=ffn, num_attention_heads=heads,
                                              _attn_implementation="sdpa"), layer_idx=0).to(dtype).eval()  # fmt: skip
            return median_ms(lambda: layer(h), repeats, warmup=1)
        config = LlamaConfig(hidden_size=d, intermediate_size=ffn, num_attention_heads=heads,
                             num_key_value_heads=heads, _attn_implementation="sdpa")  # fmt: skip
        layer = LlamaDecoderLayer(config, layer_idx=0).to(dtype).eval()
        positions = torch.arange(seq)[None]
        rotary = LlamaRotaryEmbedding(config)(h, positions)
        return median_ms(lambda: layer(h, position_embeddings=rotary, position_ids=positions), repeats, warmup=1)


def planted_library(n: int, kept: int, d: int, d_m: int, k: int, r: int, dtype: torch.dtype, seed: int = 0):
    """``n`` experts with random visual keys (stored in ``dtype``), ``kept`` of them planted near one input's key so
    that exactly those clear its sentinel; returns the library and that input's keys.

    ``psi`` shares ``phi``'s storage and ``U``/``V`` are one expert's factors repeated (stride 0): routing reads the
    ``n`` visual keys; the textual keys and factors are read for the kept experts only, whatever ``n`` is.
    """
    g = torch.Generator().manual_seed(seed)
    phi = torch.empty(n, k, d_m, dtype=dtype)
    for s in range(0, n, 65536):  # in chunks: fp32 noise for 10^6 experts would need 16 GB
        e = min(s + 65536, n)
        phi[s:e] = torch.randn(e - s, k, d_m, generator=g).to(dtype)
    query = torch.randn(1, k, d_m, generator=g)
    planted = torch.randperm(n, generator=g)[:kept]
    phi[planted] = (query + 0.1 * torch.randn(kept, k, d_m, generator=g)).to(dtype)
    U, V = (0.02 * torch.randn(1, r, d, generator=g)).to(dtype), (0.02 * torch.randn(1, r, d, generator=g)).to(dtype)
    library = ExpertLibrary()
    segment = {"ids": torch.arange(n), "key": torch.zeros(n, 16, dtype=torch.uint8), "psi": phi, "phi": phi,
               "U": U.expand(n, r, d), "V": V.expand(n, r, d)}  # fmt: skip
    library._replace([segment], removed=set(), next_id=n, frozen=True)
    # the sentinel sits at half the query's own similarity: planted keys (~1x) clear it, random ones (~0) do not
    keys = InputKeys(psi=query, phi=query, sentinel=0.5 * query, has_image=torch.ones(1, dtype=torch.bool))
    return library, keys, phi


@torch.no_grad()
def liveedit_parts_ms(
    d: int, d_m: int, k: int, r: int, image_tokens: int, seq: int, kept: int, dtype: torch.dtype, repeats: int
) -> tuple[float, float, float]:
    """Median ms of LiveEdit's input keys (fp32 networks on a ``dtype`` hidden state; then the same under bf16
    autocast, for comparison) and of applying ``kept`` experts, for one input of ``seq`` tokens at width ``d``."""
    from easyedit_liveedit.liveedit.config import LiveEditConfig

    config = LiveEditConfig(edit_layer=0, cross_attn_dim=d_m, num_heads=8, rank=r, num_key_slots=k,
                            num_sentinel_tokens=image_tokens)  # fmt: skip
    net = LiveEditNetwork(d, config).eval()
    h = torch.randn(1, seq, d, dtype=dtype)
    image = torch.zeros(1, seq, dtype=torch.bool)
    image[:, 1 : 1 + image_tokens] = True
    prompt = torch.zeros_like(image)
    prompt[:, 1 + image_tokens : seq - 8] = True  # the rest of the sequence is the prompt, bar 8 answer tokens
    keys_ms = median_ms(lambda: net.input_keys(h, image, prompt), repeats)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not what LiveEdit does: its networks compute in fp32
        keys_bf16_ms = median_ms(lambda: net.input_keys(h, image, prompt), repeats)
    library, keys, _ = planted_library(1000, kept, d, d_m, k, r, dtype)
    chosen = library.route(keys)
    apply_ms = median_ms(lambda: library.apply(h, chosen, net.expert_norm), repeats)
    return keys_ms, keys_bf16_ms, apply_ms


def speed(widths: list[int], experts: list[int], kept: int, seq: int, repeats: int, nlist: int, nprobe: int,
          codes: str) -> dict:  # fmt: skip
    """LiveEdit's added time per input against the decoder stack, and routing against a streaming read."""
    from easyedit_liveedit.index import FaissPrefilter

    d_m, k, r, dtype = 1024, 4, 4, torch.bfloat16
    result: dict[str, object] = {"sequence": seq, "dtype": dtype_name(dtype), "kept_per_input": kept, "widths": {}}
    routing: dict[int, dict[str, float]] = {}
    for n in experts:  # routing reads only the keys (k x d_m): the same for both widths
        library, keys, phi = planted_library(n, kept, 8, d_m, k, r, dtype)
        row: dict[str, float] = {"key_MB": phi.numel() * phi.element_size() / 1e6}
        row["stream_read_ms"] = median_ms(lambda p=phi: p.view(torch.int16).max(), repeats)  # one pass over the bytes
        row["exact_route_ms"] = median_ms(lambda lib=library, ks=keys: lib.route(ks), repeats)
        exact = {i for i, _ in library.route(keys).report()[0]}
        row["exact_kept"] = len(exact)
        if n >= 10 * nlist:
            start = time.perf_counter()
            prefilter = FaissPrefilter(nlist=nlist, nprobe=nprobe, codes=codes, train_size=16 * nlist,
                                       threads=torch.get_num_threads())  # fmt: skip
            library.set_prefilter(prefilter, min_experts=1)
            row["index_build_s"] = time.perf_counter() - start
            row["prefilter_route_ms"] = median_ms(lambda lib=library, ks=keys: lib.route(ks), repeats)
            got = {i for i, _ in library.route(keys).report()[0]}
            row["prefilter_recall"] = len(got & exact) / max(1, len(exact))
            row["prefilter_index"] = f"IVF{nlist},{codes} nprobe={nprobe}"
        routing[n] = row
        LOG.info("%d experts: %s", n, row)
        del library, keys, phi
    for d in widths:
        name, _, _, _, layers, image_tokens = BACKBONES[d]
        layer_ms = decoder_layer_ms(d, seq, dtype, max(3, repeats // 3))
        keys_ms, keys_bf16_ms, apply_ms = liveedit_parts_ms(d, d_m, k, r, image_tokens, seq, kept, dtype, repeats)
        forward_ms = layer_ms * layers
        rows = {}
        for n, row in routing.items():
            route_ms = row.get("prefilter_route_ms", row["exact_route_ms"])
            added = keys_ms + route_ms + apply_ms
            read = row["stream_read_ms"]
            rows[n] = {**row, "input_keys_ms": keys_ms, "apply_ms": apply_ms, "added_ms": added,
                       "added_over_forward": added / forward_ms, "input_keys_bf16_autocast_ms": keys_bf16_ms,
                       "added_over_forward_keys_bf16": (added - keys_ms + keys_bf16_ms) / forward_ms,
                       "added_over_forward_exact_route": (keys_ms + row["exact_route_ms"] + apply_ms) / forward_ms,
                       "exact_over_stream_read": row["exact_route_ms"] / read,
                       "prefilter_over_stream_read": row.get("prefilter_route_ms", math.nan) / read}  # fmt: skip
        result["widths"][d] = {"backbone": name, "decoder_layer_ms": layer_ms, "layers": layers,
                               "forward_ms (layer x layers)": forward_ms, "image_tokens": image_tokens,
                               "experts": rows}  # fmt: skip
        LOG.info("d=%d: layer %.0f ms, keys %.1f ms, apply %.1f ms", d, layer_ms, keys_ms, apply_ms)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["keys", "bytes", "recall", "speed"])
    parser.add_argument("--archive", help="trained LiveEdit archive (default: the toy YAML's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--experts", type=int, nargs="+", default=None)
    parser.add_argument("--widths", type=int, nargs="+", default=[2560, 4096])
    parser.add_argument("--kept", type=int, default=8, help="speed: experts that pass the hard filter per input")
    parser.add_argument("--sequence", type=int, default=600)
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, nargs="+", default=None)
    parser.add_argument("--codes", default="SQ8", help="speed: faiss codes of the pre-filter (Flat, SQ8, ...)")
    parser.add_argument("--noise", type=float, default=1.0, help="recall: noise std over the keys' per-dim std")
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"command": " ".join(sys.argv), "load_average_before": os.getloadavg(),
                                 "threads": args.threads, "cpu": _cpu()}  # fmt: skip
    if args.command == "keys":
        keys = extract_keys(args.archive)
        torch.save(keys, OUT / "keys.pt")
        result.update({"archive": keys["archive"], "records": keys["records"], "written": str(OUT / "keys.pt")})
    elif args.command == "bytes":
        result["bytes_per_expert"] = bytes_per_expert({"BLIP-2-OPT-2.7B": 2560, "LLaVA-1.5-7B": 4096})
    elif args.command == "recall":
        n = (args.experts or [1_000_000])[0]
        result["recall"] = recall(OUT / "keys.pt", n, args.noise, args.nlist or 4096, args.nprobe or [128, 256, 512],
                                  args.queries)  # fmt: skip
    else:
        result["speed"] = speed(args.widths, args.experts or [1000, 100_000, 1_000_000], args.kept, args.sequence,
                                args.repeats, args.nlist or 1024, (args.nprobe or [8])[0], args.codes)  # fmt: skip
    result["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=2, default=str)
    (OUT / f"{args.command}.json").write_text(text)
    print(text)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
