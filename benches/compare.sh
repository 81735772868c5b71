#!/usr/bin/env bash
# Runs the query benchmark (benches/query.rs) for an older commit and for the
# code here, in the same run, and prints every figure side by side with its
# ratio new/old.
#
#   benches/compare.sh OLD_REV [VAR=value ...]
#
# OLD_REV is checked out in a detached worktree at target/compare/old (made
# with `git worktree add --detach`, reused and reset on later runs); the
# CURRENT benches/query.rs and benches/common/ are copied over it (they use
# only the store API both sides have), then `cargo bench --bench query` runs
# there and here with the same environment. VAR=value arguments are exported
# to both (as is the caller's environment: BBCRAWL_BENCH_COMMITS, …_REPOS,
# …_RUNS, …). Each side builds its own store under its own target/, and by
# default builds it afresh (BBCRAWL_BENCH_REBUILD=1), so both sides do the
# same work; COMPARE_REUSE=1 reuses stores a previous compare left, and
# COMPARE_SKIP_RUNS=1 skips both runs and reuses their outputs (to redo the
# table or the migration step alone).
#
# Cargo: this tree builds in $CARGO_TARGET_DIR (or target/); the old tree in
# $COMPARE_OLD_TARGET_DIR (default target/compare/old/target) — never the
# same directory, the two release binaries would overwrite each other.
#
# BBCRAWL_BENCH_MIGRATE=1 adds the migration step: after both runs, the old
# run's store (schema 1) is copied, and the NEW binary's
# `bbcrawl --store COPY query stats --format json` migrates the copy in
# place on open (timed: commits/s, peak RSS). A second copy is migrated by
# the same command SIGKILLed after a random 20–80 % of that time, three
# times, then run to completion. Exactness: `export --all --format ndjson`
# by the OLD binary on the original store must be byte-identical (sha256 of
# the streams, nothing held in memory or on disk) to the NEW binary's on
# each migrated copy. Copies live in target/compare/migrate, one at a time.
#
# Output: both runs' full output in target/compare/{old,new}.out, then a
# table (figure, old, new, unit, new/old) of every `key: value unit` line,
# then the migration figures in the same `key: value unit` form. Exit
# status 1 if a run fails or the migrated store is not exact.
set -euo pipefail

usage() {
    echo "usage: $0 OLD_REV [VAR=value ...]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
old_rev=$1
shift
for kv in "$@"; do
    case $kv in
        *=*) export "${kv?}" ;;
        *) usage ;;
    esac
done

here=$(git rev-parse --show-toplevel)
cd "$here"
old_sha=$(git rev-parse --verify --quiet "$old_rev^{commit}") || {
    echo "compare: $old_rev is not a commit" >&2
    exit 2
}
new_desc="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- || new_desc="$new_desc+changes"
out=$here/target/compare
wt=$out/old
mkdir -p "$out"

# The old tree: a detached worktree at OLD_REV, tracked files reset.
if [ -e "$wt/.git" ]; then
    git -C "$wt" checkout --quiet --force --detach "$old_sha"
else
    rm -rf "$wt"
    git worktree add --quiet --detach "$wt" "$old_sha"
fi
grep -q '^name = "query"' "$wt/Cargo.toml" || {
    echo "compare: $old_rev has no [[bench]] query in Cargo.toml" >&2
    exit 2
}
cp benches/query.rs "$wt/benches/query.rs"
rm -rf "$wt/benches/common"
cp -R benches/common "$wt/benches/common"

new_target=${CARGO_TARGET_DIR:-$here/target}
old_target=${COMPARE_OLD_TARGET_DIR:-$wt/target}
if [ "$(realpath -m "$new_target")" = "$(realpath -m "$old_target")" ]; then
    echo "compare: the old and new trees need different target directories" >&2
    exit 2
fi
if [ "${COMPARE_REUSE:-0}" != 1 ]; then
    export BBCRAWL_BENCH_REBUILD=1
fi

echo "compare: old = $old_rev ($(git rev-parse --short "$old_sha")) in $wt, new = $new_desc in $here" >&2
if [ "${COMPARE_SKIP_RUNS:-0}" = 1 ] && [ -s "$out/old.out" ] && [ -s "$out/new.out" ]; then
    echo "compare: COMPARE_SKIP_RUNS=1: using the runs in $out/{old,new}.out" >&2
else
    # Both builds first, so neither run shares the machine with a compiler.
    (cd "$wt" && CARGO_TARGET_DIR=$old_target cargo bench --bench query --no-run)
    (cd "$here" && CARGO_TARGET_DIR=$new_target cargo bench --bench query --no-run)
    echo "compare: running old" >&2
    (cd "$wt" && CARGO_TARGET_DIR=$old_target cargo bench --bench query) | tee "$out/old.out"
    echo "compare: running new" >&2
    (cd "$here" && CARGO_TARGET_DIR=$new_target cargo bench --bench query) | tee "$out/new.out"
fi

# `key: value unit` lines of a run (keys are [a-z0-9_], values numbers).
figures() {
    grep -E '^[a-z][a-z0-9_]*: -?[0-9]+(\.[0-9]+)?( [^ ]+)?$' "$1" || true
}
line_value() { # file key -> first value of a `key: value` line
    sed -n "s|^$2: ||p" "$1" | head -n 1
}

echo
echo "== compare: old = $old_rev ($(git rev-parse --short "$old_sha")), new = $new_desc; ${BBCRAWL_BENCH_COMMITS:-10000000} commits, ${BBCRAWL_BENCH_REPOS:-2000} repositories"
awk '
    FNR == 1 { file++ }
    {
        key = $1; sub(/:$/, "", key)
        if (file == 1) { old[key] = $2 }
        else { new[key] = $2; unit[key] = $3; order[++n] = key }
    }
    END {
        printf "%-36s %14s %14s %-10s %8s\n", "figure", "old", "new", "unit", "new/old"
        for (i = 1; i <= n; i++) {
            k = order[i]
            o = (k in old) ? old[k] : "-"
            ratio = (k in old && old[k] + 0 != 0) ? sprintf("%.3f", new[k] / old[k]) : "-"
            printf "%-36s %14s %14s %-10s %8s\n", k, o, new[k], unit[k], ratio
        }
        for (k in old) if (!(k in new)) printf "%-36s %14s %14s %-10s %8s\n", k, old[k], "-", "", "-"
    }
' <(figures "$out/old.out") <(figures "$out/new.out")

[ "${BBCRAWL_BENCH_MIGRATE:-0}" = 1 ] || exit 0

# ---------------------------------------------------------------- migration
old_bin=$(line_value "$out/old.out" binary)
new_bin=$(line_value "$out/new.out" binary)
old_store=$(line_value "$out/old.out" store)
for f in "$old_bin" "$new_bin"; do
    [ -x "$f" ] || { echo "compare: no binary $f" >&2; exit 1; }
done
[ -d "$old_store" ] || { echo "compare: no old store $old_store" >&2; exit 1; }
mig=$out/migrate
rm -rf "$mig"
mkdir -p "$mig"
log=$mig/migrate.log
: >"$log"

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
copy_store() { # fresh copy of the old store at $1, without a daemon's address file
    rm -rf "$1"
    cp -R "$old_store" "$1"
    rm -f "$1/daemon.json"
}
export_sha() { # binary store -> sha256 of `export --all --format ndjson`
    "$1" --store "$2" export --all --format ndjson 2>>"$log" | sha256sum | cut -d' ' -f1
}

echo
echo "== migration: new binary on a copy of the old run's store ($old_store)"
t=$(now)
old_sha256=$(export_sha "$old_bin" "$old_store")
echo "old export --all: sha256 $old_sha256 ($(elapsed "$t" "$(now)") s)" >&2

# 1. Uninterrupted, timed; peak RSS by GNU time (ru_maxrss of the child).
copy_store "$mig/copy1"
t=$(now)
/usr/bin/time -f '%M' -o "$mig/time1" \
    "$new_bin" --store "$mig/copy1" query stats --format json >"$mig/stats.json" 2>>"$log"
secs=$(elapsed "$t" "$(now)")
rss_kb=$(tail -n 1 "$mig/time1")
commits=$(grep -o '"commits":[0-9]*' "$mig/stats.json" | head -n 1 | cut -d: -f2)
[ -n "$commits" ] || { echo "compare: no commit count in $mig/stats.json" >&2; exit 1; }
sha1=$(export_sha "$new_bin" "$mig/copy1")
rm -rf "$mig/copy1"

# 2. Killed three times at a random 20–80 % of that time, then completed.
copy_store "$mig/copy2"
kills=0
for k in 1 2 3; do
    pct=$(shuf -i 20-80 -n 1)
    delay=$(awk -v s="$secs" -v p="$pct" 'BEGIN { printf "%.3f", s * p / 100 }')
    "$new_bin" --store "$mig/copy2" query stats --format json >/dev/null 2>>"$log" &
    pid=$!
    sleep "$delay"
    # Still running (not a zombie waiting to be reaped)?
    state=$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$pid/stat" 2>/dev/null || true)
    if [ -n "$state" ] && [ "$state" != Z ] && kill -KILL "$pid" 2>/dev/null; then
        kills=$((kills + 1))
        echo "kill $k: SIGKILL after $delay s ($pct %)" >&2
    else
        echo "kill $k: the run had already ended after $delay s ($pct %)" >&2
    fi
    wait "$pid" 2>/dev/null || true
done
t=$(now)
"$new_bin" --store "$mig/copy2" query stats --format json >/dev/null 2>>"$log"
resume_secs=$(elapsed "$t" "$(now)")
sha2=$(export_sha "$new_bin" "$mig/copy2")
rm -rf "$mig/copy2"

exact1=0; [ "$sha1" = "$old_sha256" ] && exact1=1
exact2=0; [ "$sha2" = "$old_sha256" ] && exact2=1
awk -v c="$commits" -v s="$secs" -v r="$rss_kb" -v rs="$resume_secs" -v k="$kills" \
    -v e1="$exact1" -v e2="$exact2" 'BEGIN {
    printf "migration_commits: %d commits\n", c
    printf "migration_s: %.2f s\n", s
    printf "migration_commits_per_s: %.0f commits/s\n", (s > 0 ? c / s : 0)
    printf "migration_rss_mb: %.1f MB\n", r / 1024
    printf "migration_kills: %d count\n", k
    printf "migration_resume_s: %.2f s\n", rs
    printf "migration_exact: %d bool\n", e1
    printf "migration_exact_after_kills: %d bool\n", e2
}'
echo "(stderr of the migrations: $log)"
if [ "$exact1" != 1 ] || [ "$exact2" != 1 ]; then
    echo "compare: the migrated store's export differs from the old store's (old $old_sha256, uninterrupted $sha1, after kills $sha2)" >&2
    exit 1
fi
