"""Which benchmark results no longer match the code they measured.

Every results JSON written by `harness.write_results` records, under
`"provenance"`, the git commit it ran at, the source files of the
component it measures (`COMPONENTS`: the benchmark script and the
`keras_gr` modules it exercises) and a SHA-256 over those files' bytes.
A result is *stale* when that hash differs from the hash of the same
files now.

A component's list may be narrowed on purpose (`COMPONENTS`: each part of
the Shampoo benchmark depends on its own module, not the other parts):
a result whose recorded files changed is still fresh when the files it
depends on now, a strict subset, are byte for byte what the run hashed
(checked exactly against the recorded hash, see `_narrowed_unchanged`).

Results written before provenance was recorded are judged from git
history instead: the commit that last changed the JSON stands in for the
commit it ran at, and the result is stale when any component file changed
after that commit (or has uncommitted changes). On both paths a Python
file whose docstrings or comments alone changed (`code_of`: its syntax
tree without docstrings) does not make a result stale. This is
approximate: a
result committed together with a code change looks fresh even if it ran
before the change; such results are listed as "no provenance" so a reader
knows the check is weaker.

Run `python -m benchmarks.freshness` from the repository root: it lists
every result and whether it is stale, and exits 0 (a listing, not a
gate). `--stale` lists only the stale ones.
"""

import argparse
import ast
import glob
import hashlib
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")

# Result-name prefix -> the files whose change invalidates the result. The
# longest matching prefix wins (see `component_sources`).
COMPONENTS = {
    # The in-memory parts (`--part measures`, `--part kmeans`): array
    # inputs, which reach the streaming module only through
    # `streaming.is_stream` (a type test) when `KMeans` dispatches; the
    # streamed, sharded and on-disk modules are the stream part's.
    "curation": [
        "benchmarks/curation.py",
        "keras_gr/_backend.py",
        "keras_gr/_kmeans.py",
        "keras_gr/curation/__init__.py",
        "keras_gr/curation/evaluation.py",
        "keras_gr/curation/kmeans.py",
        "keras_gr/curation/selection.py",
        "keras_gr/curation/sequence_embedder.py",
    ],
    "curation_stream": [
        "benchmarks/curation.py",
        "benchmarks/curation_stream.py",
        "keras_gr/_backend.py",
        "keras_gr/_kmeans.py",
        "keras_gr/curation/",
    ],
    "latent_crf": [
        "benchmarks/latent_crf.py",
        "keras_gr/layers/latent_crf.py",
        "keras_gr/models/diffusion/",
        "keras_gr/metrics/classification.py",
        "keras_gr/metrics/frechet_distance.py",
        "keras_gr/metrics/vendi.py",
        "keras_gr/data/digits.py",
    ],
    "laurel": [
        "benchmarks/laurel.py",
        "keras_gr/layers/laurel.py",
        "keras_gr/layers/laurel_stack.py",
        "keras_gr/data/corpora.py",
    ],
    "looped_icl": [
        "benchmarks/looped_icl/",
        "keras_gr/models/looped_icl/looped_icl_regressor.py",
        "keras_gr/layers/linear_attention.py",
        "keras_gr/data/icl_regression.py",
    ],
    "looped_reasoning": [
        "benchmarks/looped_reasoning.py",
        "keras_gr/layers/looped_block.py",
        "keras_gr/hub/looped_lm.py",
        "keras_gr/regularizers/looping.py",
        "keras_gr/data/addition.py",
        "keras_gr/data/p_hop.py",
        "keras_gr/data/_lm_tasks.py",
    ],
    "lora_rite": [
        "benchmarks/lora_rite.py",
        "keras_gr/optimizers/lora_rite.py",
        "keras_gr/presets/local_preset.py",
    ],
    "routing": [
        "benchmarks/routing.py",
        "keras_gr/models/routing/base_router.py",
        "keras_gr/models/routing/cluster_router.py",
        "keras_gr/models/routing/knn_router.py",
        "keras_gr/models/routing/learned_map_router.py",
        "keras_gr/models/routing/oracle_router.py",
        "keras_gr/models/routing/zero_router.py",
        "keras_gr/metrics/routing.py",
        "keras_gr/presets/llm_pool.py",
    ],
    "salt": [
        "benchmarks/salt.py",
        "keras_gr/callbacks/salt.py",
        "keras_gr/models/salt/salt_distiller.py",
        "keras_gr/models/salt/salt_selection.py",
        "keras_gr/losses/distillation.py",
        "keras_gr/data/phased_dataset.py",
    ],
    "shampoo": [
        "benchmarks/shampoo/",
        # The whole package: the Shampoo family, its shared helpers and
        # the AdaGrad baselines are split over many modules.
        "keras_gr/optimizers/",
    ],
    "softsrv": [
        "benchmarks/softsrv.py",
        "keras_gr/models/softsrv/softsrv.py",
        "keras_gr/hub/prefix_lm.py",
        "keras_gr/metrics/mauve.py",
        "keras_gr/data/math_word_problems.py",
    ],
}
# `looped_compile_*` is written by benchmarks/looped_reasoning.py.
COMPONENTS["looped_compile"] = COMPONENTS["looped_reasoning"]
# Each part of the Shampoo benchmark depends on its own module, the
# package's shared ones and the optimizers, not on the other parts: a
# change to the regression part leaves the speed results fresh.
for _part in ("regression", "scale", "speed", "quality"):
    COMPONENTS[f"shampoo_{_part}"] = [
        f"benchmarks/shampoo/{_part}.py",
        "benchmarks/shampoo/__init__.py",
        "benchmarks/shampoo/__main__.py",
        "benchmarks/shampoo/common.py",
        "keras_gr/optimizers/",
    ]


def component_sources(name):
    """The source files (repo-relative, sorted) of result `name`, or []."""
    keys = [k for k in COMPONENTS if name.startswith(k)]
    if not keys:
        return []
    files = []
    for entry in COMPONENTS[max(keys, key=len)]:
        if entry.endswith("/"):
            pattern = os.path.join(ROOT, entry, "*.py")
            files.extend(os.path.relpath(p, ROOT) for p in glob.glob(pattern))
        else:
            files.append(entry)
    return sorted(set(files))


def _read(rel, commit):
    """Bytes of `rel` in the working tree, or at `commit`; None if absent."""
    if commit is None:
        path = os.path.join(ROOT, rel)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()
    try:
        out = subprocess.run(
            ["git", "show", f"{commit}:{rel}"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
    except OSError:
        return None
    return None if out.returncode else out.stdout


def source_hash(files, commit=None, *, now=()):
    """SHA-256 over each file's path and bytes (a missing file counts), in
    the working tree or, with `commit`, as the files were at that commit
    (except the files in `now`, read from the working tree)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0")
        data = _read(rel, None if rel in now else commit)
        h.update(b"<missing>" if data is None else data)
        h.update(b"\0")
    return h.hexdigest()


def _git(*args):
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out


def git_commit():
    """HEAD's commit hash, or None outside a git checkout."""
    out = _git("rev-parse", "HEAD")
    if out is None or out.returncode:
        return None
    return out.stdout.strip()


def _dirty(files, since="HEAD"):
    """Whether `files` differ between `since` and the working tree."""
    if not files:
        return False
    out = _git("diff", "--quiet", since, "--", *files)
    # Exit 1 with an error message is git failing (no repository), not a
    # difference.
    return out is not None and out.returncode == 1 and not out.stderr


def provenance(name, sources=None):
    """The `"provenance"` record a results JSON carries."""
    files = component_sources(name) if sources is None else sorted(sources)
    return {
        "git_commit": git_commit(),
        "sources_uncommitted": _dirty(files),
        "sources": files,
        "source_hash": source_hash(files),
    }


def backfill(path):
    """Adds a `"provenance"` record from git history to a results JSON that
    has none: the commit that last changed the JSON stands in for the run's
    commit, and the hash is of the component files at that commit. Marked
    `"from_git_history": true`. Returns whether the file was changed."""
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:
        payload = json.load(f)
    if not isinstance(payload, dict) or payload.get("provenance"):
        return False
    rel = os.path.relpath(path, ROOT)
    out = _git("log", "-1", "--format=%H", "--", rel)
    commit = out.stdout.strip() if out is not None else ""
    files = component_sources(name)
    if not commit or not files:
        return False
    payload["provenance"] = {
        "git_commit": commit,
        "sources_uncommitted": False,
        "sources": files,
        "source_hash": source_hash(files, commit),
        "from_git_history": True,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return True


def _commits_from(commit, files):
    """`commit`, then each later commit that changed `files`, oldest
    first: where a run's sources may be stored (a run over uncommitted
    sources saw them as a later commit stored them)."""
    later = _git("log", "--format=%H", f"{commit}..HEAD", "--", *files)
    if later is None or later.returncode:
        return [commit]
    return [commit] + later.stdout.split()[::-1]


def _narrowed_unchanged(name, record):
    """The result's component files as `COMPONENTS` lists them now, when
    that list is a strict subset of the files the run recorded (a
    component's list narrowed on purpose, e.g. one part of a benchmark
    package) and those files are byte for byte what the run hashed; else
    [].

    The check is exact: the recorded hash is recomputed with the listed
    files as they are now and every other recorded file as it was at some
    commit from the run's on (the run's own, then each later one that
    changed them: a run over uncommitted sources saw them as a later
    commit stored them). A match proves the listed files are what the run
    saw, whichever commit supplied the others."""
    files = component_sources(name)
    recorded = record.get("sources", [])
    commit = record.get("git_commit")
    if not files or not commit or not set(files) < set(recorded):
        return []
    now = set(files)
    for candidate in _commits_from(commit, sorted(set(recorded) - now)):
        if source_hash(recorded, candidate, now=now) == record.get(
            "source_hash"
        ):
            return files
    return []


def code_of(rel, data):
    """What of a file can change a measurement: for Python source, its
    syntax tree without docstrings (comments and layout are not in it);
    other files (or Python that does not parse) byte for byte."""
    if data is None or not rel.endswith(".py"):
        return data
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return data
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def _only_prose_changed(record):
    """The recorded files whose docstrings or comments changed since the
    run while their code did not, when that holds for every file that
    changed; else [].

    The run's files are found as in `_narrowed_unchanged` (the commit
    whose files reproduce the recorded hash: the run's own, or a later one
    that stored sources the run saw uncommitted); then each file now is
    compared with it by `code_of`."""
    files = record.get("sources", [])
    commit = record.get("git_commit")
    if not files or not commit:
        return []
    for candidate in _commits_from(commit, files):
        if source_hash(files, candidate) != record.get("source_hash"):
            continue
        prose = []
        for rel in files:
            then, now = _read(rel, candidate), _read(rel, None)
            if then == now:
                continue
            if code_of(rel, then) != code_of(rel, now):
                return []
            prose.append(rel)
        return prose
    return []


def check(path):
    """`(status, detail)` of one results JSON: fresh, stale or unknown."""
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path) as f:
        payload = json.load(f)
    record = payload.get("provenance") if isinstance(payload, dict) else None
    if record:
        files = record.get("sources", [])
        if not files:
            return "unknown", "no component sources recorded"
        if source_hash(files) == record.get("source_hash"):
            return "fresh", f"hash matches (ran at {record['git_commit']})"
        narrowed = _narrowed_unchanged(name, record)
        if narrowed:
            return "fresh", (
                f"the {len(narrowed)} files it depends on now (COMPONENTS, "
                f"narrower than the {len(files)} it recorded) are what the run "
                f"at {record['git_commit']} hashed"
            )
        prose = _only_prose_changed(record)
        if prose:
            return "fresh", (
                "only docstrings or comments changed since the run at "
                f"{record['git_commit']}: " + ", ".join(prose)
            )
        changed = [
            f
            for f in files
            if _dirty([f], record["git_commit"] or "HEAD")
            or not os.path.exists(os.path.join(ROOT, f))
        ]
        return "stale", "changed since the run: " + (
            ", ".join(changed) or "(source hash differs)"
        )
    files = component_sources(name)
    if not files:
        return "unknown", "no provenance and no known component"
    rel = os.path.relpath(path, ROOT)
    out = _git("log", "-1", "--format=%H", "--", rel)
    commit = out.stdout.strip() if out is not None else ""
    if not commit:
        return "unknown", "no provenance and not committed"
    differ = [f for f in files if _dirty([f], commit)]
    changed = [
        f
        for f in differ
        if code_of(f, _read(f, commit)) != code_of(f, _read(f, None))
    ]
    if changed:
        return "stale", (
            f"no provenance; changed after {commit[:8]} (the result's last "
            "commit): " + ", ".join(changed)
        )
    if differ:
        return "fresh", (
            f"no provenance; only docstrings or comments changed since "
            f"{commit[:8]}: " + ", ".join(differ)
        )
    return "fresh", f"no provenance; unchanged since {commit[:8]}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stale", action="store_true", help="stale only")
    args = parser.parse_args(argv)
    counts = {}
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        status, detail = check(path)
        counts[status] = counts.get(status, 0) + 1
        if args.stale and status != "stale":
            continue
        print(f"{status:7s} {os.path.basename(path)}: {detail}")
    print(
        "freshness: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
