#!/usr/bin/env bash
# Install the peers the benchmarks measure against, each in its own virtualenv under
# benchmarks/.peers/ (git-ignored), never as a project dependency. Idempotent: a peer
# whose venv already imports at the wanted version is left as it is.
#
#   bash benchmarks/peers.sh            # every peer
#   PYTHON=python3.11 bash benchmarks/peers.sh
#   FEAST_SPEC="feast[redis]==0.68.*" FEAST_WANT=0.68. bash benchmarks/peers.sh   # another release
#
# Feast: 0.67 with the Redis extra (redis-py for its Redis online store); its SQLite
# online store and file offline store need nothing beyond the base package.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="$HERE/.peers"
PYTHON="${PYTHON:-python3.11}"
FEAST_SPEC="${FEAST_SPEC:-feast[redis]==0.67.*}"
FEAST_WANT="${FEAST_WANT:-0.67.}"

mkdir -p "$PEERS"

# pip install, without the warnings about local index folders that a machine may not have.
pip_quiet() {
    local venv="$1"
    shift
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
        { grep -v '^WARNING: Location .* is ignored' || true; }
}

install_feast() {
    local venv="$PEERS/feast"
    if [[ -x "$venv/bin/python" ]] &&
        "$venv/bin/python" -c "import feast, redis, sys; sys.exit(not feast.__version__.startswith('$FEAST_WANT'))" 2>/dev/null; then
        echo "feast: already installed in $venv"
    else
        echo "feast: installing '$FEAST_SPEC' into $venv ($PYTHON; a minute or two)"
        [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
        pip_quiet "$venv" --upgrade pip
        pip_quiet "$venv" "$FEAST_SPEC"
    fi
    echo "feast: installed in $venv:"
    "$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
        grep -iE '^(feast|redis|pandas|pyarrow|dask|duckdb|numpy|sqlalchemy|protobuf) ' | sed 's/^/  /'
}

install_feast
