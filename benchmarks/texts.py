"""Text-embedding throughput: a text tower through the store's text cache, uncached and cached.

    python benchmarks/texts.py                       # the tests' tiny CLIP tower, 2,000 prompts
    python benchmarks/texts.py --size base --n 500   # a CLIP ViT-B text tower's shape (random)
    python benchmarks/texts.py --threads 1           # on a busy machine: no thread spinning

Builds a random CLIP (``--size tiny``: the tests' 1-layer 16-wide text tower, 77 tokens;
``base``: 12 layers, 512 wide, 77 tokens, as ViT-B/16's) with a real ``CLIPTokenizer`` over a
small BPE vocabulary, ingests a few images so a store column records the tower, then times for N
distinct prompts (texts/s, best of ``--repeat`` rounds, fresh prompts each round): the
baseline, transformers' own ``get_text_features`` on tokenizer batches of 64 (what a user writes
by hand); ``TextTower.encode``; ``embedstore.embed_texts`` with nothing cached, given a resident
tower (model + cache lookup + cache write) and building the column's tower itself (+ loading
it); and again with every prompt cached (no model loaded).
Prints a table and writes ``benchmarks/out/texts.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embedstore  # noqa: E402
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402
from tests.conftest import TINY_TEXT, TINY_VISION, tiny_clip_tokenizer, write_class_images  # noqa: E402

SIZES = {
    "tiny": {**TINY_TEXT, "max_position_embeddings": 77},
    "base": {
        "hidden_size": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "max_position_embeddings": 77,
    },
}
WORDS = "daisy rose tulip iris orchid lily poppy aster violet fern moss oak pine birch".split()


def prompts(n: int, start: int = 0, seed: int = 0) -> list[str]:
    """N distinct prompts of 4-9 words (numbered from ``start``), as zero-shot templates over
    species names give."""
    rng = np.random.default_rng(seed + start)
    out = []
    for i in range(start, start + n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 7)))
        out.append(f"a photo of a {' '.join(words)} number {i}")
    return out


def build(folder: Path, size: str) -> Path:
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_clip_tokenizer()
    text = {**TINY_TEXT, **SIZES[size], "vocab_size": len(tok)}
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    text["pad_token_id"] = tok.pad_token_id
    cfg = CLIPConfig(
        text_config=text, vision_config={**TINY_VISION, "image_size": 32}, projection_dim=64
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="distinct prompts")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each path")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); on a busy machine 1 avoids spinning",
    )
    ap.add_argument("--out", default="benchmarks/out/texts.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    from transformers import AutoTokenizer, CLIPModel

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build(Path(tmp) / "clip", args.size)
        write_class_images(Path(tmp) / "imgs", n_classes=2, per_class=2, size=40)
        store = Path(tmp) / "store"
        embedstore.ingest(Path(tmp) / "imgs", store, backbones=[str(model_dir)], progress=False)
        model = CLIPModel.from_pretrained(model_dir).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)

        @torch.inference_mode()
        def baseline(texts):
            for s in range(0, len(texts), args.batch_size):
                batch = texts[s : s + args.batch_size]
                enc = tok(batch, padding=True, truncation=True, max_length=77, return_tensors="pt")
                model.get_text_features(**enc)

        tower = embedstore.backbones.text_tower(str(model_dir), device="cpu").load()
        info_col = embedstore.connect(store).resolve_backbone(None)
        resident = embedstore.backbones.text_tower(info_col, device="cpu").load()
        paths = {
            "transformers get_text_features (baseline)": lambda t: baseline(t),
            "TextTower.encode": lambda t: tower.encode(t, batch_size=args.batch_size),
            "embed_texts, nothing cached, resident tower": (
                lambda t: embedstore.embed_texts(store, t, tower=resident)
            ),
            "embed_texts, all cached": lambda t: embedstore.embed_texts(store, t),
            "embed_texts, nothing cached, tower loaded": lambda t: embedstore.embed_texts(store, t),
        }
        best: dict[str, float] = {}
        for r in range(args.repeat):  # fresh prompts each round: "nothing cached" stays true
            a, b = prompts(args.n, 2 * r * args.n), prompts(args.n, (2 * r + 1) * args.n)
            for name, f in paths.items():
                t = b if name.endswith("tower loaded") else a
                best[name] = min(best.get(name, np.inf), timed(lambda f=f, t=t: f(t)))
        rows = [
            {"path": k, "texts": args.n, "seconds": v, "texts_per_s": args.n / v}
            for k, v in best.items()
        ]
        st = embedstore.connect(store)
        assert st.text_cache.count() == 2 * args.n * args.repeat
        base = rows[0]["texts_per_s"]
        for r in rows:
            r["vs_baseline"] = r["texts_per_s"] / base
    print_table(
        rows,
        ["path", "texts", "seconds", "texts_per_s", "vs_baseline"],
        title=f"text tower {args.size} ({sum(p.numel() for p in model.text_model.parameters()):,}"
        f" parameters), {args.n} prompts, batch {args.batch_size}, {torch.get_num_threads()} "
        f"thread(s); load {info['load_avg']}",
    )
    write_json({"machine": info, "args": vars(args), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
