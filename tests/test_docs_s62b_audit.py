"""docs/layout.md's import rules and docs/predictor.md's V100 and co-design figures against
the code (session 62's audit): the modules beside ``compile`` that layout.md lists, the
module-level imports across its layers that it names as exceptions, and the figures the
predictor computes from presets (default factors, nothing of this machine read)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "laudtriton"


def _text(name: str) -> str:
    """A doc page with its line breaks (and the indents after them) as single spaces."""
    return re.sub(r"\s*\n\s*", " ", (ROOT / "docs" / name).read_text())


def _imports_paragraph() -> str:
    """layout.md's paragraph that starts "Imports go from", one line."""
    text = (ROOT / "docs" / "layout.md").read_text()
    para = text.split("\nImports go from", 1)[1].split("\n\n", 1)[0]
    return "Imports go from " + re.sub(r"\s*\n\s*", " ", para)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(body: list[ast.stmt]):
    """The import statements a module runs when imported: its body's, and those inside
    top-level ``if`` / ``try`` blocks, but not under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody,
                         *[h.body for h in node.handlers]):
                yield from _module_level(part)


def _targets(path: Path, node: ast.stmt) -> list[str]:
    """The package modules an import statement of ``path`` names (``from . import x``
    names the module x when x is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("laudtriton")]
    base = _module_name(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if not mod.startswith("laudtriton"):
        return []
    folder = ROOT.joinpath(*mod.split("."))
    subs = [f"{mod}.{a.name}" for a in node.names
            if (folder / f"{a.name}.py").exists() or (folder / a.name).is_dir()]
    return subs or [mod]


def _module_imports() -> set[tuple[str, str]]:
    """(importer, imported) for every module-level import between package modules."""
    found = set()
    for path in sorted(PKG.rglob("*.py")):
        for node in _module_level(ast.parse(path.read_text()).body):
            found |= {(_module_name(path), t) for t in _targets(path, node)}
    return found


COMMANDS = {"__main__", "cli", "bench", "bench_command", "baseline", "bench_report", "plot",
            "plot_rows", "plot_command", "gpucheck", "gpureport", "testing", "kernelchecks"}
COMPILE = {"compile", "compiled"}
LEVELS = {"schedule": 2, "codesign": 2, "tune": 3, "predict": 3, "ops": 4, "kernels": 5,
          "nn": 6, "runtime": 6, "progress": 6, "_version": 6}


def _level(module: str, beside: set[str]) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    if top in COMMANDS:
        return 0
    if top in COMPILE | beside:
        return 1
    return LEVELS.get(top)


def _beside() -> set[str]:
    """The modules layout.md lists beside compile/compiled."""
    m = re.search(r"the modules beside them: ([^)]*)\)", _imports_paragraph())
    assert m, "layout.md's import paragraph lists no modules beside compile"
    return set(re.findall(r"`(\w+)`", m.group(1)))


def test_layout_lists_every_module_compile_runs_beside_it():
    """compile, compiled and compiled_block import module_copy, host_gates, pooling and
    mask_checks at module level; layout.md listed only eight of their twelve siblings."""
    imported = {t.split(".")[1] for m, t in _module_imports()
                if m in ("laudtriton.compile", "laudtriton.compiled",
                         "laudtriton.compiled_block") and t.count(".") == 1}
    siblings = imported - COMMANDS - COMPILE - set(LEVELS)
    assert siblings, imported
    missing = sorted(siblings - _beside())
    assert not missing, f"layout.md's modules beside compile lack {missing}"


# Each module-level import up layout.md's layers (or between tune and predict), with the
# words of the import paragraph that name it.
EXCEPTIONS = {
    ("laudtriton.predict.commands", "laudtriton.tune.layout_options"):
        ("predict/commands.py", "tune.layout_options"),
    ("laudtriton.predict.command_options", "laudtriton.tune.layout_options"):
        ("predict/command_options.py", "tune.layout_options"),
    ("laudtriton.predict.fit", "laudtriton.tune.cache"):
        ("predict/fit.py", "tune.cache.check_spec"),
    ("laudtriton.predict.model", "laudtriton.tune.cache"):
        ("predict/model.py", "tune.cache.check_spec"),
    ("laudtriton.predict.network", "laudtriton.tune.cache"):
        ("predict/network.py", "tune.cache.check_spec"),
    ("laudtriton.predict.command_options", "laudtriton.tune.numbers"):
        ("predict/command_options.py", "tune.numbers"),
    ("laudtriton.predict.design_command", "laudtriton.tune.numbers"):
        ("predict/design_command.py", "tune.numbers"),
    ("laudtriton.tune.sweep", "laudtriton.schedule"): ("sweep", "rate_key", "run_rate"),
    ("laudtriton.tune.commands", "laudtriton.schedule"): ("commands", "rate_key", "format_rate"),
    ("laudtriton.tune.cache_command", "laudtriton.schedule"): ("cache_command", "format_rate"),
    ("laudtriton.tune.cache_command", "laudtriton.bench_command"):
        ("tune.cache_command", "bench_command.torch_threads"),
    ("laudtriton.tune.measure", "laudtriton.kernelchecks"):
        ("tune.measure", "kernelchecks.exact_fp32"),
}


def test_layout_names_every_module_level_import_up_its_layers():
    """predict/fit.py imports tune.cache, tune/cache_command.py bench_command and
    tune/measure.py kernelchecks at module level: layout.md said no other module-level
    import went up a layer than tune.options' and schedule's rate keys."""
    beside = _beside()
    up = set()
    for importer, target in _module_imports():
        a, b = _level(importer, beside), _level(target, beside)
        if a is None or b is None or importer.split(".")[1] == target.split(".")[1]:
            continue
        if b < a or (a == b == 3):
            up.add((importer, target))
    assert up == set(EXCEPTIONS), (sorted(up - set(EXCEPTIONS)),
                                   sorted(set(EXCEPTIONS) - up))
    para = _imports_paragraph()
    unnamed = {pair: words for pair, words in EXCEPTIONS.items()
               if not all(w in para for w in words)}
    assert not unnamed, f"layout.md's import paragraph does not name {unnamed}"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty cache folder, so that nothing of this machine (or the shipped cache) is
    read."""
    monkeypatch.setenv("LAUDTRITON_CACHE_DIR", str(tmp_path))


def test_predictor_md_design_ranks_are_design_searchs(empty_cache):
    """predictor.md's 4-4-2-1 vs 8-4-7-1 ranks among the 500 spatial configurations: until
    session 62 it gave those from before session 58's tile quantisation of whole cells
    (V100 fp32: ranks 385 and 314)."""
    from laudtriton.codesign import design_search
    from laudtriton.predict import get_hardware

    def ranked(hw: str, batch: int, dtype: str):
        designs = design_search("laud_resnet101", get_hardware(hw), 0.5, ("spatial",),
                                (1, 2, 4, 7, 8), batch=batch, dtype=dtype)
        assert len(designs) == 500
        at = {d.s_label(): (rank, d.seconds / batch * 1e3)
              for rank, d in enumerate(designs, 1)}
        return at["4-4-2-1"], at["8-4-7-1"], designs[0].dense_seconds / batch * 1e3

    text = _text("predictor.md")
    (r4, t4), (r8, t8), dense = ranked("v100", 128, "float32")
    want = [f"V100 fp32 batch 128, 4-4-2-1 {t4:.3f} ms/img (rank {r4}), 8-4-7-1 {t8:.3f} "
            f"(rank {r8}), dense {dense:.3f}"]
    (r4, t4), (r8, t8), dense = ranked("v100", 128, "float16")
    want.append(f"V100 fp16, {t4:.3f} vs {t8:.3f} (ranks {r4}, {r8}), dense {dense:.3f}")
    (r4, t4), (r8, t8), dense = ranked("jetson_tx2", 1, "float16")
    want.append(f"Jetson TX2 fp16 batch 1, {t4:.1f} vs {t8:.1f} ms (ranks {r4}, {r8}), "
                f"dense {dense:.1f}")
    missing = [w for w in want if w not in text]
    assert not missing, missing


def test_predictor_md_v100_figures_are_the_models(empty_cache):
    """predictor.md's V100 section: the static ResNet-101 at 2.02 ms/img for the blocks,
    2.06 with stem and head, 0.27 in fp16, 7.68 GMAC/img, and the compute term at peak:
    0.98 ms/img, 1.01 with the tile quantisation (it said 1.01 for the plain quotient)."""
    from laudtriton.predict import get_hardware, model_specs
    from laudtriton.predict.model import predict_static_dense, predict_stem_head, quantisation

    hw = get_hardware("v100")
    text = _text("predictor.md")

    def ms_per_img(dtype: str) -> tuple[float, float]:
        specs = [s for _, s in model_specs("laud_resnet101", batch=128, dtype=dtype)]
        blocks = sum(predict_static_dense(s, hw) for s in specs)
        return blocks / 128 * 1e3, (blocks + predict_stem_head(224, 128, dtype, hw)) / 128 * 1e3

    blocks, whole = ms_per_img("float32")
    assert f"**{blocks:.2f} ms/img** for the 33 residual blocks ({whole:.2f} ms/img with stem" \
        in text
    assert f"`--dtype float16`), {ms_per_img('float16')[1]:.2f} ms/img" in text
    specs = [s for _, s in model_specs("laud_resnet101", batch=128, dtype="float32")]
    assert len(specs) == 33
    macs = sum(sum(s.conv_macs()) for s in specs)  # per image
    padded = sum(sum(s.conv_macs()) * quantisation(s, 1.0, "dense", hw) for s in specs)
    peak = hw.peak_macs("float32")
    assert f"The blocks hold {macs / 1e9:.2f} GMAC/img; at the {peak / 1e12:.2f} TMAC/s fp32 " \
        f"datasheet peak that is {macs / peak * 1e3:.2f} ms/img ({padded / peak * 1e3:.2f} " \
        "with our tile quantisation q)" in text
