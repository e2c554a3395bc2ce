"""The paper table in one command: every shipped model x every benchmark found x its scales.

    python -m minisr.report [--data-root DIR] [--out DIR] [--models NAME,...] [--ensemble]
    python -m minisr.eval --table [same options]

For each benchmark folder under the data root (Set5, Set14, BSD100, Urban100, ...; training sets such as T91 and
BSD200 are skipped) and each shipped model (``minisr/weights/*.npz``) at each of its scales: PSNR / SSIM (Y channel,
border = scale, MATLAB bicubic LR, as :mod:`minisr.eval`) beside bicubic and the published figure of the paper the
architecture comes from (``PUBLISHED``). Writes ``table.md`` (Markdown, for the README and the model card),
``table.png`` (a chart) and ``results.json`` (every image's scores) into ``--out``, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .data import ENV_VAR, DatasetNotFoundError, ImageReadError, list_images
from .eval import evaluate
from .upscalers import bicubic_upscaler, make_upscaler

# Published PSNR / SSIM (Y channel, border = scale, MATLAB bicubic LR), with where they come from.
CITATIONS = {
    "srcnn": "SRCNN 9-5-5 (Dong et al., TPAMI 2016, trained on ImageNet), as tabulated in Kim et al., CVPR 2016, "
             "Table 3",
    "vdsr": "VDSR (Kim, Lee, Lee, 'Accurate Image Super-Resolution Using Very Deep Convolutional Networks', "
            "CVPR 2016), Table 3",
    "edsr-baseline": "EDSR baseline, 16 blocks x 64 features (Lim et al., 'Enhanced Deep Residual Networks for "
                     "Single Image Super-Resolution', CVPRW 2017), Table 3",
    "bicubic": "Bicubic, as tabulated in Kim et al., CVPR 2016, Table 3",
    "fsrcnn": "FSRCNN(56, 12, 4) (Dong, Loy, Tang, 'Accelerating the Super-Resolution Convolutional Neural Network', "
              "ECCV 2016), Set5 PSNR as the project's target quotes it (SSIM not recorded here)",
    "espcn": "ESPCN trained on 91 images (Shi et al., 'Real-Time Single Image and Video Super-Resolution Using an "
             "Efficient Sub-Pixel Convolutional Neural Network', CVPR 2016), Set5 x3 PSNR (SSIM not recorded here)",
    "srresnet": "SRResNet-MSE, 16 blocks x 64 features (Ledig et al., 'Photo-Realistic Single Image Super-Resolution "
                "Using a Generative Adversarial Network', CVPR 2017, trained on 350k ImageNet images), Table 2",
    "srgan": "SRGAN-VGG54 (Ledig et al., CVPR 2017), Table 2: a VGG feature content loss, where ours is pixel MSE",
}
PUBLISHED = {
    # (paper, dataset, scale): (PSNR, SSIM)
    ("bicubic", "Set5", 2): (33.66, 0.9299), ("bicubic", "Set5", 3): (30.39, 0.8682),
    ("bicubic", "Set5", 4): (28.42, 0.8104),
    ("bicubic", "Set14", 2): (30.24, 0.8688), ("bicubic", "Set14", 3): (27.55, 0.7742),
    ("bicubic", "Set14", 4): (26.00, 0.7027),
    ("srcnn", "Set5", 2): (36.66, 0.9542), ("srcnn", "Set5", 3): (32.75, 0.9090), ("srcnn", "Set5", 4): (30.48, 0.8628),
    ("srcnn", "Set14", 2): (32.42, 0.9063), ("srcnn", "Set14", 3): (29.28, 0.8209),
    ("srcnn", "Set14", 4): (27.49, 0.7503),
    ("vdsr", "Set5", 2): (37.53, 0.9587), ("vdsr", "Set5", 3): (33.66, 0.9213), ("vdsr", "Set5", 4): (31.35, 0.8838),
    ("vdsr", "Set14", 2): (33.03, 0.9124), ("vdsr", "Set14", 3): (29.77, 0.8314), ("vdsr", "Set14", 4): (28.01, 0.7674),
    ("edsr-baseline", "Set5", 2): (37.99, 0.9604), ("edsr-baseline", "Set5", 3): (34.33, 0.9265),
    ("edsr-baseline", "Set5", 4): (32.09, 0.8938),
    # (Set14 baseline figures not yet checked against the paper's PDF in this repository: no EDSR weights ship yet.)
    ("edsr-baseline", "Set14", 2): (33.57, 0.9175), ("edsr-baseline", "Set14", 3): (30.28, 0.8415),
    ("edsr-baseline", "Set14", 4): (28.58, 0.7813),
    ("fsrcnn", "Set5", 2): (37.00, None), ("fsrcnn", "Set5", 3): (33.06, None), ("fsrcnn", "Set5", 4): (30.72, None),
    ("espcn", "Set5", 3): (32.55, None),
    ("srresnet", "Set5", 4): (32.05, 0.9019), ("srresnet", "Set14", 4): (28.49, 0.8184),
    ("srgan", "Set5", 4): (29.40, 0.8472), ("srgan", "Set14", 4): (26.02, 0.7397),
}
# Folders under the data root that are training sets, never benchmarks.
TRAINING_SETS = {"t91", "bsd200", "div2k", "div2k_train", "general100", "train"}
# Benchmarks in the papers' order; others follow alphabetically.
ORDER = ["set5", "set14", "bsd100", "b100", "urban100", "manga109"]


class NoDataRootError(DatasetNotFoundError):
    """--table found no data root: the message says where it looked."""


def paper_of(meta: dict) -> str | None:
    """The paper whose table a model belongs to: its architecture, with EDSR's 16x64 configuration as EDSR-baseline
    and SRResNet / SRGAN only in the paper's 16x64 configuration."""
    name, cfg = meta.get("model"), meta.get("config", {})
    if name == "edsr":
        return "edsr-baseline" if (cfg.get("n_resblocks"), cfg.get("n_feats")) == (16, 64) else None
    if name in ("srresnet", "srgan"):
        return name if (cfg.get("n_blocks", 16), cfg.get("n_feats", 64)) == (16, 64) else None
    return name if name in ("srcnn", "vdsr", "fsrcnn", "espcn", "srresnet", "srgan") else None


def data_root(given=None) -> Path:
    """The data root (``--data-root``, else ``$MINISR_DATA``); a clear error naming both places when neither is a
    folder."""
    if given is not None:
        root = Path(given).expanduser()
        if root.is_dir():
            return root
        raise NoDataRootError(f"--table: the data root {root} (from --data-root) is not a folder")
    env = os.environ.get(ENV_VAR)
    if env and Path(env).expanduser().is_dir():
        return Path(env).expanduser()
    where = f"${ENV_VAR} is {env!r}, not a folder" if env else f"${ENV_VAR} is not set"
    raise NoDataRootError(f"--table: no data root: --data-root was not given and {where}. Point either at the folder "
                          "that holds Set5/, Set14/, ... (HR/ and LR_bicubic/X<s>/, or just images)")


def benchmarks(root: Path) -> list[str]:
    """The benchmark folders under ``root`` (those holding images, directly or in HR/), training sets left out."""
    found = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.lower() in TRAINING_SETS or p.name.startswith("."):
            continue
        if list_images(p / "HR" if (p / "HR").is_dir() else p):
            found.append(p.name)
    return sorted(found, key=lambda n: (ORDER.index(n.lower()) if n.lower() in ORDER else len(ORDER), n.lower()))


def shipped_models(names=None) -> dict[str, dict]:
    """``{name: meta}`` of the shipped weights (or of ``names``: shipped names or checkpoint paths)."""
    from .models import load, shipped

    out = {}
    names = list(names if names else shipped(aliases=False))  # vdsr.npz once, at each of its scales
    stems = [Path(n).stem if Path(n).suffix == ".npz" else n for n in names]
    for name, stem in zip(names, stems):
        _, meta = load(name)
        if stems.count(stem) > 1:  # runs/a/best.npz and runs/b/best.npz: a/best, b/best
            stem = f"{Path(name).parent.name}/{stem}"
        out[stem] = dict(meta, spec=str(name))
    return out


def model_scales(meta: dict) -> list[int]:
    """The scales to evaluate: a name that answers one scale of a multi-scale file (``vdsr-x3``) that scale only."""
    from .models import trained_scales

    return [int(meta["scale"])] if meta.get("alias_of") else trained_scales(meta)


def run_table(root: Path, models: dict[str, dict], ensemble: bool = False, log=print, datasets=None) -> list[dict]:
    """Evaluate bicubic and every model on every benchmark (or on ``datasets``) at each model's scales; one entry per
    evaluation."""
    sets = list(datasets) if datasets else benchmarks(root)
    if not sets:
        raise DatasetNotFoundError(f"--table: no benchmark folders with images under {root} (training sets "
                                   f"{', '.join(sorted(TRAINING_SETS))} are skipped)")
    scales = sorted({s for meta in models.values() for s in model_scales(meta)})
    rows = []
    for dataset in sets:
        for scale in scales:
            jobs = [("bicubic", None, bicubic_upscaler(scale), False)]
            for name, meta in models.items():
                if scale in model_scales(meta):
                    jobs.append((name, meta, make_upscaler(meta["spec"], scale), False))
                    if ensemble:
                        jobs.append((name + "+", meta, make_upscaler(meta["spec"], scale, ensemble=True), True))
            for name, meta, up, plus in jobs:
                res = evaluate(up, dataset, scale, data_root=root, progress=True)
                paper = "bicubic" if meta is None else paper_of(meta)
                published = PUBLISHED.get((paper, dataset, scale))
                rows.append(dict(model=name, paper=paper, dataset=dataset, scale=scale, ensemble=plus,
                                 psnr=res["mean"]["psnr"], ssim=res["mean"]["ssim"],
                                 published=dict(zip(("psnr", "ssim"), published)) if published else None,
                                 images=res["images"]))
                log(f"{dataset} x{scale} {name}: {res['mean']['psnr']:.2f} dB / {res['mean']['ssim']:.4f}")
    return rows


def markdown(rows: list[dict]) -> str:
    """One table per benchmark: model, scale, PSNR / SSIM, bicubic, published, ours minus published."""
    lines = ["PSNR (dB) / SSIM on the Y channel, border = scale, MATLAB bicubic LR "
             "(`python -m minisr.eval --table`). \"+\": x8 self-ensemble. Published figures:", ""]
    papers = sorted({r["paper"] for r in rows if r["paper"] and r["published"]} | {"bicubic"})
    lines += [f"- {p}: {CITATIONS[p]}." for p in papers]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        here = [r for r in rows if r["dataset"] == dataset]
        bic = {r["scale"]: r for r in here if r["model"] == "bicubic"}
        lines += ["", f"**{dataset}**", "", "| model | scale | PSNR / SSIM | bicubic | published | vs published |",
                  "|---|---|---|---|---|---|"]
        for r in here:
            if r["model"] == "bicubic":
                continue
            b, pub = bic[r["scale"]], r["published"]
            pub_ssim = "-" if not pub or pub["ssim"] is None else f"{pub['ssim']:.4f}"
            pub_txt = f"{pub['psnr']:.2f} / {pub_ssim}" if pub else "-"
            gap = f"{r['psnr'] - pub['psnr']:+.2f} dB" if pub else "-"
            lines.append(f"| {r['model']} | x{r['scale']} | {r['psnr']:.2f} / {r['ssim']:.4f} | "
                         f"{b['psnr']:.2f} / {b['ssim']:.4f} | {pub_txt} | {gap} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> Path:
    """PSNR gain over bicubic per model, one panel per benchmark; the published gain as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets) + 1, 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        here = [r for r in rows if r["dataset"] == dataset]
        bic = {r["scale"]: r for r in here if r["model"] == "bicubic"}
        models = [r for r in here if r["model"] != "bicubic"]
        xs = range(len(models))
        gains = [r["psnr"] - bic[r["scale"]]["psnr"] for r in models]
        ax.bar(xs, gains, color=["tab:orange" if r["ensemble"] else "tab:blue" for r in models])
        for x, r in zip(xs, models):
            if r["published"]:
                pub = r["published"]["psnr"] - (PUBLISHED.get(("bicubic", dataset, r["scale"])) or
                                                 (bic[r["scale"]]["psnr"],))[0]
                ax.plot([x - 0.4, x + 0.4], [pub, pub], "k-", lw=2)
        ax.set_xticks(list(xs), [f"{r['model']}" for r in models], rotation=45, ha="right", fontsize=8)
        ax.set(title=dataset, ylabel="PSNR gain over bicubic (dB, Y)")
        ax.axhline(0, color="gray", lw=0.8)
    fig.suptitle("minisr shipped models (bars) vs the papers (black: published gain over published bicubic)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minisr.report", description=__doc__.splitlines()[0])
    p.add_argument("--data-root", metavar="DIR", help=f"root of the benchmarks (default ${ENV_VAR})")
    p.add_argument("--ensemble", action="store_true", help="also score each model's x8 self-ensemble ('+')")
    add_table_arguments(p)
    return p


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """The table's own options (``minisr.eval --table`` adds these to its parser)."""
    p.add_argument("--out", metavar="DIR", default="paper-table",
                   help="table: where table.md, table.png and results.json go (default ./paper-table)")
    p.add_argument("--models", help="table: comma-separated shipped names or checkpoint paths (default: every "
                                    "shipped one)")
    p.add_argument("--datasets", help="table: comma-separated benchmarks (default: every one under the data root)")


def main(argv=None, args=None) -> int:
    """The CLI; ``args`` (already parsed, by ``minisr.eval --table``) takes the place of ``argv``."""
    if args is None:
        args = build_parser().parse_args(argv)
    try:
        root = data_root(args.data_root)
        models = shipped_models([m for m in args.models.split(",") if m] if args.models else None)
        if not models:
            raise FileNotFoundError("no shipped models in minisr/weights and no --models given")
        sets = [d for d in args.datasets.split(",") if d] if args.datasets else None
        rows = run_table(root, models, ensemble=args.ensemble, log=lambda m: print(m, file=sys.stderr), datasets=sets)
    except (DatasetNotFoundError, ImageReadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    _write_text(out / "table.md", text)
    _write_text(out / "results.json", json.dumps({"data_root": str(root), "citations": CITATIONS, "results": rows},
                                                 indent=1))
    figure(rows, out / "table.png")
    print(text, end="")
    print(f"wrote {out / 'table.md'}, {out / 'table.png'}, {out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
