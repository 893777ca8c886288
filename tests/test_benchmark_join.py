"""`exps/benchmark.py --join`: one report over several benchmark folders, sources untouched, conflicts refused."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_bench_command import fake_results

from cim_plugin import bench
from cim_plugin.bench import report
from cim_plugin.bench.join import join_benchmarks
from cim_plugin.config import ConfigError

CFG = {"dataset": "synthetic", "model_name": "icarl", "memory_size": 60}


def fake_benchmark(root, seeds_by_config, aia_of=lambda stem, variant, seed: 40.0 + seed + (5 if variant == "cim" else 0),
                   configs=None, baseline_only=False):
    """A benchmark folder as exps/benchmark.py leaves it: manifest + finished run folders."""
    configs = configs or {stem: {"path": f"exps/bench/{stem}.json", "config": dict(CFG)} for stem in seeds_by_config}
    seeds = sorted({s for v in seeds_by_config.values() for s in v})
    manifest = bench.make_manifest(configs, seeds, None, baseline_only=baseline_only)
    if any(sorted(v) != seeds for v in seeds_by_config.values()):  # as a joined folder's manifest says it
        manifest["config_seeds"] = {stem: sorted(v) for stem, v in seeds_by_config.items()}
    root.mkdir(parents=True)
    (root / bench.MANIFEST).write_text(json.dumps(manifest))
    for stem, stem_seeds in seeds_by_config.items():
        for variant in manifest["variants"][stem]:
            for seed in stem_seeds:
                fake_results(root / stem / variant / f"seed_{seed}", seed=seed, cim=variant == "cim",
                             aia=aia_of(stem, variant, seed))
    return root


def rows_of(folder):
    with open(folder / "summary.csv") as fh:
        return {(r["config"], r["variant"]): r for r in csv.DictReader(fh)}


def test_join_reports_all_runs_once_with_each_configs_own_seeds(tmp_path):
    aia = {1: 3.0, 2: 5.0, 3: 10.0}  # CIM's gain per seed of config "a"
    a1 = fake_benchmark(tmp_path / "a1", {"a": [1, 2]},
                        aia_of=lambda s, v, seed: 40.0 + (aia[seed] if v == "cim" else 0.0))
    a2 = fake_benchmark(tmp_path / "a2", {"a": [3], "b": [1, 2]},
                        aia_of=lambda s, v, seed: 40.0 + (aia[seed] if v == "cim" and s == "a" else 0.0))
    before = {p: p.read_bytes() for p in tmp_path.rglob("results.json")}
    out = tmp_path / "joined"
    manifest = join_benchmarks([a1, a2], out)
    assert manifest["config_seeds"] == {"a": [1, 2, 3], "b": [1, 2]} and manifest["seeds"] == [1, 2, 3]
    assert manifest["variants"] == {"a": ["baseline", "cim"], "b": ["baseline", "cim"]}
    linked = out / "a" / "cim" / "seed_3" / "results.json"
    assert linked.read_bytes() == (a2 / "a" / "cim" / "seed_3" / "results.json").read_bytes()
    assert os.stat(linked).st_ino == os.stat(a2 / "a" / "cim" / "seed_3" / "results.json").st_ino  # a hard link

    report.build_report(out, dataset_loader=lambda config: None)
    rows = rows_of(out)
    a = rows[("a", "cim")]
    assert int(a["n_paired"]) == 3 and float(a["gain_aia_cnn_mean"]) == pytest.approx(6.0)
    assert float(a["gain_aia_cnn_se"]) == pytest.approx(math.sqrt(13.0) / math.sqrt(3.0))  # std of 3, 5, 10
    assert int(rows[("b", "cim")]["n_paired"]) == 2
    md = (out / "summary.md").read_text()
    assert "not finished" not in md  # b was run on seeds 1, 2 only: nothing is missing
    assert "Seeds per config: a [1, 2, 3]; b [1, 2]." in md and "--join" in md and str(a2.resolve()) in md
    assert {p: p.read_bytes() for p in before} == before  # the sources are unchanged
    assert not (a1 / "summary.md").exists()


def test_join_still_names_runs_a_source_never_finished(tmp_path):
    a1 = fake_benchmark(tmp_path / "a1", {"a": [1, 2]})
    a2 = fake_benchmark(tmp_path / "a2", {"a": [3, 4]})
    (a2 / "a" / "cim" / "seed_4" / "results.json").unlink()
    join_benchmarks([a1, a2], tmp_path / "j")
    report.build_report(tmp_path / "j", dataset_loader=lambda config: None)
    assert "1 run(s) not finished, left out: a/cim/seed_4" in (tmp_path / "j" / "summary.md").read_text()


def test_join_refuses_overlaps_different_configs_and_foreign_folders(tmp_path):
    a1 = fake_benchmark(tmp_path / "a1", {"a": [1, 2]})
    a2 = fake_benchmark(tmp_path / "a2", {"a": [2, 3]})
    with pytest.raises(ConfigError, match=r"a/baseline/seed_2 is in both"):
        join_benchmarks([a1, a2], tmp_path / "j1")
    assert not (tmp_path / "j1").exists()  # nothing half-written
    other = {"a": {"path": "x.json", "config": dict(CFG, memory_size=30, device=["0"])}}
    a3 = fake_benchmark(tmp_path / "a3", {"a": [5]}, configs=other)
    with pytest.raises(ConfigError, match=r"config 'a' differs between the folders \(keys \['memory_size'\]\)"):
        join_benchmarks([a1, a3], tmp_path / "j2")
    same_but_device = {"a": {"path": "x.json", "config": dict(CFG, device=["0"])}}
    a4 = fake_benchmark(tmp_path / "a4", {"a": [6]}, configs=same_but_device)
    join_benchmarks([a1, a4], tmp_path / "j3")  # "device" may differ, as for --resume
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="holds no benchmark"):
        join_benchmarks([a1, tmp_path / "plain"], tmp_path / "j4")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        join_benchmarks([a1, a4], tmp_path / "j3")
    with pytest.raises(ConfigError, match="at least two"):
        join_benchmarks([a1], tmp_path / "j5")


def test_join_command_line(tmp_path):
    a1 = fake_benchmark(tmp_path / "a1", {"a": [1, 2]})
    a2 = fake_benchmark(tmp_path / "a2", {"a": [3]})
    script = str(REPO / "exps" / "benchmark.py")
    ok = subprocess.run([sys.executable, script, "--join", str(a1), str(a2), "--out", str(tmp_path / "j")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and int(rows_of(tmp_path / "j")[("a", "cim")]["n_paired"]) == 3
    bad = subprocess.run([sys.executable, script, "--join", str(a1), str(a2)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--join takes benchmark folders and --out DIR only" in bad.stderr
    clash = subprocess.run([sys.executable, script, "--join", str(a1), str(a1), "--out", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=300)
    assert clash.returncode == 2 and clash.stderr.startswith("error: --join: run a/baseline/seed_1 is in both")


def test_baseline_only_runs_no_cim_and_every_arm_is_compared_with_the_joined_reference(tmp_path):
    """`--baseline-only` plans and runs the baseline alone; joined beside a full benchmark of the same learner,
    the report compares each of that benchmark's arms with the reference run by run (e.g. CIM against the
    learner with twice the memory), with the reference as b."""
    from test_bench_command import FakeRunner
    config = tmp_path / "a_m2.json"
    config.write_text(json.dumps(dict(CFG, memory_size=120)))
    runner, out = FakeRunner(), tmp_path / "ref"
    rc = bench.run_benchmark([config], seeds=[1, 2], out_dir=out, runner=runner, echo=lambda m: None,
                                  baseline_only=True)
    assert rc == 0 and [name for name, _ in runner.calls] == ["a_m2/baseline/seed_1", "a_m2/baseline/seed_2"]
    assert json.loads((out / bench.MANIFEST).read_text())["variants"] == {"a_m2": ["baseline"]}
    with pytest.raises(ConfigError, match="--baseline-only runs no CIM variant"):
        bench.run_benchmark([config], seeds=[1], out_dir=tmp_path / "x", mask_modes=["cam"], baseline_only=True,
                                 runner=runner, echo=lambda m: None)

    gains = {1: 2.0, 2: 6.0, 3: 1.0}
    full = fake_benchmark(tmp_path / "full", {"a": [1, 2, 3]},
                          aia_of=lambda s, v, seed: 40.0 + (gains[seed] if v == "cim" else 0.0))
    ref = fake_benchmark(tmp_path / "ref2", {"a_m2": [1, 2, 3]}, aia_of=lambda s, v, seed: 42.0 + seed,
                         configs={"a_m2": {"path": "exps/bench/a_m2.json", "config": dict(CFG, memory_size=120)}},
                         baseline_only=True)
    joined = tmp_path / "joined"
    join_benchmarks([full, ref], joined)
    report.build_report(joined, dataset_loader=lambda c: None)
    md = (joined / "summary.md").read_text()
    assert "| a / cim | a_m2 / baseline | 3 | −1.00 ± 1.73 | −1.00, +2.00, −4.00 |" in md  # 42 + seed vs 40 + gain
    assert "| a / baseline | a_m2 / baseline | 3 | −4.00 ± 0.58 | −3.00, −4.00, −5.00 |" in md
    assert "a_m2 / baseline | a /" not in md  # the reference is never a


def test_no_baseline_runs_the_cim_variants_alone_and_compares_them_with_each_other(tmp_path):
    """`--no-baseline` (a budget under one full image per class): only the CIM variants run, the report has no
    baseline row and no gain over one, and the variants are compared with each other run by run; one variant
    alone, or both flags, are refused before anything runs."""
    from test_bench_command import fake_results
    aia = {("cim-cim-jpeg", 1): 60.0, ("cim-cim-jpeg", 2): 55.0, ("cim-full-jpeg", 1): 57.0,
           ("cim-full-jpeg", 2): 54.0}
    calls = []

    def runner(spec, resume):
        calls.append(spec.name)
        config = json.loads((spec.dir / "config.json").read_text())
        assert config["cim"] is True and config["exemplar_codec"] == "jpeg"
        fake_results(spec.dir, cim=True, seed=config["seed"][0], aia=aia[(spec.variant, spec.seed)], config=config)
        return 0

    config = tmp_path / "a_m4.json"
    config.write_text(json.dumps(dict(CFG, memory_size=4)))
    out = tmp_path / "tiny"
    rc = bench.run_benchmark([config], seeds=[1, 2], out_dir=out, runner=runner, echo=lambda m: None,
                                  mask_modes=["cim", "full"], codecs=["jpeg"], no_baseline=True)
    assert rc == 0
    assert calls == ["a_m4/cim-cim-jpeg/seed_1", "a_m4/cim-full-jpeg/seed_1",
                     "a_m4/cim-cim-jpeg/seed_2", "a_m4/cim-full-jpeg/seed_2"]
    assert json.loads((out / bench.MANIFEST).read_text())["variants"] == {"a_m4": ["cim-cim-jpeg",
                                                                                       "cim-full-jpeg"]}
    assert not (out / "a_m4" / "baseline").exists()
    rows = rows_of(out)
    assert set(rows) == {("a_m4", "cim-cim-jpeg"), ("a_m4", "cim-full-jpeg")}
    assert all(r["gain_aia_cnn_mean"] in ("", "nan") for r in rows.values())
    md = (out / "summary.md").read_text()
    assert "| cim-cim-jpeg (a_m4) | cim-full-jpeg | 2 | +2.00 ± 1.00 | +3.00, +1.00 |" in md
    # --resume with the same flags goes on; without --no-baseline it is another setup
    assert bench.run_benchmark([config], seeds=[1, 2], out_dir=out, runner=runner, echo=lambda m: None,
                                    mask_modes=["cim", "full"], codecs=["jpeg"], no_baseline=True, resume=True) == 0
    assert len(calls) == 4
    with pytest.raises(ConfigError, match="different setup"):
        bench.run_benchmark([config], seeds=[1, 2], out_dir=out, runner=runner, echo=lambda m: None,
                                 mask_modes=["cim", "full"], codecs=["jpeg"], resume=True)
    with pytest.raises(ConfigError, match="--no-baseline leaves one CIM variant"):
        bench.run_benchmark([config], seeds=[1], out_dir=tmp_path / "x", runner=runner, echo=lambda m: None,
                                 no_baseline=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        bench.run_benchmark([config], seeds=[1], out_dir=tmp_path / "y", runner=runner, echo=lambda m: None,
                                 baseline_only=True, no_baseline=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    script = str(REPO / "exps" / "benchmark.py")
    bad = subprocess.run([sys.executable, script, str(config), "--no-baseline", "--out", str(tmp_path / "z")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--no-baseline leaves one CIM variant" in bad.stderr
