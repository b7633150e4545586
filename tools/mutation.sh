#!/usr/bin/env bash
# Mutation testing: mutmut 3 on one module at a time, in a scratch copy of the tree.
#
#   tools/mutation.sh summary                # one module (see setup.cfg's [mutmut:NAME])
#   tools/mutation.sh summary output weights # several, one after the other
#   tools/mutation.sh                        # all: summary output weights sources preprocess sort
#
# Needs mutmut in the environment: pip install 'mutmut==3.8.1'.
# Environment:
#   MUTATION_REF=HEAD    copy that commit (git archive) instead of the working tree as it is
#   MUTATION_JOBS=2      mutants tested at once (default: the number of CPUs)
#   MUTATION_DIR=DIR     where the scratch copies go (default: $TMPDIR/resnext-mutation)
# Each module leaves DIR/MODULE/score.json (killed, survived, ...) and survivors.txt (mutmut
# results: one line per mutant that no test killed); `cd DIR/MODULE && mutmut show NAME`
# prints a mutant's diff. src/ in the checkout is never touched.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
scratch=${MUTATION_DIR:-${TMPDIR:-/tmp}/resnext-mutation}
jobs=${MUTATION_JOBS:-$(nproc 2>/dev/null || echo 2)}
if [ "$#" -eq 0 ]; then
    set -- summary output weights sources preprocess sort
fi
command -v mutmut >/dev/null || {
    echo "mutation.sh: mutmut is not installed (pip install 'mutmut==3.8.1')" >&2
    exit 2
}

for module in "$@"; do
    case $module in
        *[!a-z_]* | "")
            echo "mutation.sh: bad module name '$module'" >&2
            exit 2
            ;;
    esac
    work=$scratch/$module
    rm -rf "$work"
    mkdir -p "$work"
    if [ -n "${MUTATION_REF:-}" ]; then
        git -C "$root" archive "$MUTATION_REF" src tests data pyproject.toml setup.cfg |
            tar -x -C "$work"
    else
        (cd "$root" && tar -c --exclude=__pycache__ src tests data pyproject.toml setup.cfg) |
            tar -x -C "$work"
    fi
    # The module's section joins [mutmut]; mutmut reads only [mutmut] of ./setup.cfg.
    python3 - "$work/setup.cfg" "$module" <<'EOF'
import configparser
import sys

path, module = sys.argv[1], sys.argv[2]
cfg = configparser.ConfigParser(interpolation=None)
cfg.read(path, encoding="utf-8")
section = f"mutmut:{module}"
if not cfg.has_section(section):
    known = [s.split(":", 1)[1] for s in cfg.sections() if s.startswith("mutmut:")]
    sys.exit(f"mutation.sh: no [{section}] in setup.cfg (choose from: {', '.join(known)})")
base = dict(cfg["mutmut"])
for key, value in cfg[section].items():
    if key not in cfg.defaults():
        base["pytest_add_cli_args_test_selection" if key == "tests" else key] = value
base["pytest_add_cli_args"] += "\n-p\nresnext_mutation_cache"
if base.get("type_check_command", "").strip():
    base["type_check_command"] += "\n" + base["only_mutate"]
else:  # a section's empty type_check_command turns the mypy step off
    base.pop("type_check_command", None)
out = configparser.ConfigParser(interpolation=None)
out["mutmut"] = base
with open(path, "w", encoding="utf-8") as fh:
    out.write(fh)
EOF
    # pyproject.toml must not carry a [tool.mutmut] table: mutmut would read it instead.
    if grep -q '^\[tool\.mutmut\]' "$work/pyproject.toml"; then
        echo "mutation.sh: pyproject.toml has [tool.mutmut]; keep the settings in setup.cfg" >&2
        exit 2
    fi
    # Every mutant's pytest session would build the seeded test checkpoints afresh
    # (seconds each); this plugin builds each once per module and copies it.
    mkdir -p "$work/plugin" "$work/checkpoints"
    cat >"$work/plugin/resnext_mutation_cache.py" <<'EOF'
"""Run a mutant's fastest tests first; build each test checkpoint once per module."""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path


# mutmut's trampolines add a few frames to every call of a mutated function: code that
# recurses to a depth limit of its own (torch_file's 200 levels) would hit Python's 1,000.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))


def pytest_collection_modifyitems(session, config, items):
    # mutmut hands a forked mutant its tests unordered; with -x the fastest should go first.
    stats = Path("mutmut-stats.json")
    if stats.is_file():
        took = json.loads(stats.read_text(encoding="utf-8")).get("duration_by_test", {})
        items.sort(key=lambda item: took.get(item.nodeid, 0.0))
    conftest = sys.modules.get("tests.conftest")
    if conftest is None or getattr(conftest.make_checkpoint, "cached", False):
        return
    make = conftest.make_checkpoint
    cache = Path(os.environ["RESNEXT_MUTATION_CHECKPOINTS"])

    def make_checkpoint(path, **options):
        key = hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:16]
        kept = cache / f"{key}.pth"
        if not kept.exists():
            partial = make(cache / f"{key}.{os.getpid()}.partial", **options)
            os.replace(partial, kept)
        shutil.copyfile(kept, path)
        return Path(path)

    make_checkpoint.cached = True
    conftest.make_checkpoint = make_checkpoint
EOF
    echo "== $module: mutmut in $work ($jobs at once)"
    started=$(date +%s)
    (
        cd "$work"
        export PYTHONPATH="$work/plugin" RESNEXT_MUTATION_CHECKPOINTS="$work/checkpoints"
        # One thread per mutant: several mutants at once, each with a thread per core, spin
        # in OpenMP's waits and run a 1 s test for 40 s, past mutmut's wall-clock limit.
        export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
        # The mutated copy in mutants/src must be what the tests import, not the checkout
        # an editable install points at; mutmut puts mutants/src first on sys.path.
        mutmut run --max-children "$jobs"
        mutmut export-cicd-stats >/dev/null
        cp mutants/mutmut-cicd-stats.json score.json
        mutmut results >survivors.txt || true
    )
    python3 - "$work/score.json" "$module" "$(($(date +%s) - started))" <<'EOF'
import json
import sys

path, module, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = json.load(open(path, encoding="utf-8"))
total = s["total"]
# The stats file has no count for mutants mypy rejected; they are the rest of the total.
counted = ("killed", "survived", "no_tests", "skipped", "suspicious", "timeout", "segfault")
by_mypy = total - sum(s[k] for k in counted) - s["check_was_interrupted_by_user"]
killed = s["killed"] + s["timeout"] + s["segfault"] + by_mypy
share = 100 * killed / total if total else 0.0
print(
    f"{module}: killed {killed}/{total} ({share:.1f}%; {by_mypy} by mypy, {s['timeout']} by "
    f"timeout), survived {s['survived']}, no tests {s['no_tests']}, suspicious "
    f"{s['suspicious']}, in {seconds // 60}m{seconds % 60:02d}s"
)
EOF
    sed 's/^/    /' "$work/survivors.txt"
done
