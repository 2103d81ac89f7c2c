#!/usr/bin/env bash
# Install Parley as systemd services on this host, from this checkout. Run as root.
#
#   deploy/install.sh [--dry-run] [--torch auto|cpu|cuda] [--prefix DIR]
#   deploy/install.sh --uninstall [--purge] [--dry-run]
#
# Installs: the `parley` system user (systemd-sysusers), a virtualenv in PREFIX/venv with the
# CPU or CUDA build of torch, /etc/parley/ (parley.toml, parley.env, credentials/, services),
# the units in /etc/systemd/system/; enables parley.target and the units listed in
# /etc/parley/services. Safe to run again: whatever is already as it should be is left alone
# (a second run changes nothing). Nothing is started: edit the config, then
# `systemctl start parley.target`. See deploy/README.md.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_VERSION="2.13.0"
# PyPI's Linux torch wheel bundles CUDA; each kind comes from its own PyTorch index.
CUDA_INDEX_URL="${PARLEY_TORCH_CUDA_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
CPU_INDEX_URL="${PARLEY_TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
DEFAULT_BIN="/opt/parley/venv/bin/parley"   # the path the unit files carry

usage() {
    cat <<'EOF'
Usage: install.sh [options]

  --dry-run          print every action, change nothing
  --torch KIND       auto (default: cuda when nvidia-smi sees a GPU), cpu or cuda
  --prefix DIR       where the virtualenv goes (default /opt/parley)
  --python PATH      use the parley of an existing environment (PATH/../parley) instead
                     of creating a virtualenv
  --root DIR         install into DIR as the file system root (packaging, tests);
                     nothing is reloaded or stopped
  --uninstall        stop and remove the units, the virtualenv and /etc/parley;
                     the data in /var/lib/parley and the user are kept
  --purge            with --uninstall: remove the data and the user too
  -h, --help         this help
EOF
}

DRY_RUN=0 UNINSTALL=0 PURGE=0 TORCH=auto PREFIX=/opt/parley PYTHON="" ROOT=""
while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --torch)
            [[ $# -ge 2 ]] || { echo "install.sh: --torch needs a value" >&2; exit 2; }
            TORCH="$2"; shift ;;
        --prefix)
            [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a value" >&2; exit 2; }
            PREFIX="$2"; shift ;;
        --python)
            [[ $# -ge 2 ]] || { echo "install.sh: --python needs a value" >&2; exit 2; }
            PYTHON="$2"; shift ;;
        --root)
            [[ $# -ge 2 ]] || { echo "install.sh: --root needs a value" >&2; exit 2; }
            ROOT="$(realpath -m "$2")"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$TORCH" in auto | cpu | cuda) ;; *)
    echo "install.sh: --torch must be auto, cpu or cuda, not '$TORCH'" >&2; exit 2 ;;
esac
[[ $PURGE == 0 || $UNINSTALL == 1 ]] || { echo "install.sh: --purge goes with --uninstall" >&2; exit 2; }
[[ $PREFIX == /* ]] || { echo "install.sh: --prefix must be an absolute path" >&2; exit 2; }
if [[ $DRY_RUN == 0 && -z $ROOT && $(id -u) != 0 ]]; then
    echo "install.sh: run as root (or try --dry-run)" >&2
    exit 1
fi

ETC="$ROOT/etc/parley"
UNITS="$ROOT/etc/systemd/system"
SYSUSERS="$ROOT/etc/sysusers.d/parley.conf"
STATE="$ROOT/var/lib/parley"
VENV="$ROOT$PREFIX/venv"
if [[ -n $PYTHON ]]; then
    BIN="$(dirname "$PYTHON")/parley"
else
    BIN="$PREFIX/venv/bin/parley"
fi
LIVE_SYSTEMD=0
[[ -z $ROOT && -d /run/systemd/system ]] && LIVE_SYSTEMD=1
CHANGED=0

# --- actions: each prints what it does; under --dry-run it only prints -------------------
act() {
    CHANGED=1
    if ((DRY_RUN)); then
        printf 'would run: %s\n' "$*"
    else
        printf '+ %s\n' "$*"
        "$@"
    fi
}

ok() { printf 'ok: %s\n' "$*"; }

# install_file SRC DST MODE: install SRC as DST unless DST already has that content and mode.
install_file() {
    local src="$1" dst="$2" mode="$3"
    if [[ -f $dst ]] && cmp -s "$src" "$dst" && [[ $(stat -c %a "$dst") == "${mode#0}" ]]; then
        ok "$dst"
        return
    fi
    act install -D -m "$mode" "$src" "$dst"
}

# install_new SRC DST MODE: install SRC as DST only if DST does not exist (the admin's file).
install_new() {
    if [[ -e $2 ]]; then
        ok "$2 (kept as edited)"
    else
        act install -D -m "$3" "$1" "$2"
    fi
}

make_dir() {  # make_dir DIR MODE
    if [[ -d $1 && $(stat -c %a "$1") == "${2#0}" ]]; then
        ok "$1/"
    else
        act install -d -m "$2" "$1"
    fi
}

systemctl_() {
    if [[ -n $ROOT ]]; then
        act systemctl --root="$ROOT" "$@"
    else
        act systemctl "$@"
    fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- install --------------------------------------------------------------------------------
gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

install_user() {
    install_file "$SRC/deploy/sysusers.d/parley.conf" "$SYSUSERS" 0644
    if grep -q '^parley:' "$ROOT/etc/passwd" 2>/dev/null; then
        ok "user parley"
    elif [[ -n $ROOT ]]; then
        act systemd-sysusers --root="$ROOT" "$SRC/deploy/sysusers.d/parley.conf"
    else
        act systemd-sysusers "$SYSUSERS"
    fi
    # The state directory: the units' StateDirectory= makes it (and keeps it the user's).
    make_dir "$STATE" 0750
    if [[ -n $ROOT ]] || [[ -d $STATE && $(stat -c %U "$STATE") == parley ]]; then
        ok "owner of $STATE"
    else
        act chown parley:parley "$STATE"
    fi
}

torch_kind() {
    if [[ $TORCH != auto ]]; then
        echo "$TORCH"
    elif (($(gpu_count) > 0)); then
        echo cuda
    else
        echo cpu
    fi
}

# The stamp says which source and torch build the virtualenv holds, so a rerun skips pip.
source_stamp() {
    (cd "$SRC" && find bot engine adapters pyproject.toml -type f ! -path '*/__pycache__/*' \
        -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

install_venv() {
    if [[ -n $PYTHON ]]; then
        [[ -x $BIN ]] || { echo "install.sh: $BIN does not exist" >&2; exit 1; }
        ok "using $BIN (no virtualenv made)"
        return
    fi
    local kind stamp
    kind="$(torch_kind)"
    stamp="torch=$kind source=$(source_stamp)"
    if [[ -x $VENV/bin/python ]]; then
        ok "$VENV"
    else
        act python3 -m venv "$VENV"
    fi
    if [[ -f $VENV/.parley-installed ]] && [[ $(cat "$VENV/.parley-installed") == "$stamp" ]]; then
        ok "parley and torch ($kind) in $VENV"
        return
    fi
    local index="$CPU_INDEX_URL"
    [[ $kind == cuda ]] && index="$CUDA_INDEX_URL"
    act "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" --index-url "$index"
    # The engine extra asks for the same torch version, so pip keeps the build just installed.
    act "$VENV/bin/pip" install -q "$SRC[engine]"
    if ((DRY_RUN)); then
        printf 'would write: %s\n' "$VENV/.parley-installed"
    else
        printf '%s\n' "$stamp" >"$VENV/.parley-installed"
    fi
}

install_config() {
    make_dir "$ETC" 0755
    install_new "$SRC/deploy/parley.toml.example" "$ETC/parley.toml" 0644
    install_new "$SRC/deploy/parley.env.example" "$ETC/parley.env" 0600
    make_dir "$ETC/credentials" 0700
    local d
    for d in shared web discord telegram; do
        make_dir "$ETC/credentials/$d" 0700
    done
    if [[ -e $ETC/services ]]; then
        ok "$ETC/services (kept as edited)"
    else
        default_services >"$TMP/services"
        act install -m 0644 "$TMP/services" "$ETC/services"
    fi
}

default_services() {
    local gpus i
    gpus="$(gpu_count)"
    echo "# Units install.sh enables (one a line); edit, then run install.sh again."
    echo "# One engine per GPU (parley-engine@<index>); adapters: parley-adapter@web,"
    echo "# parley-adapter@discord, parley-adapter@telegram (each needs its token)."
    if ((gpus > 0)); then
        for ((i = 0; i < gpus; i++)); do echo "parley-engine@$i.service"; done
    else
        echo "parley-engine@0.service"
    fi
    echo "parley-adapter@web.service"
    echo "parley-trainer.service"
    echo "parley-train.timer"
}

render_unit() {  # render_unit SRC DST: the unit with this install's paths
    sed -e "s#$DEFAULT_BIN#$BIN#g" -e "s#/opt/parley/#$PREFIX/#g" "$1" >"$2"
}

install_units() {
    local unit name
    for unit in "$SRC"/deploy/systemd/*; do
        name="$(basename "$unit")"
        render_unit "$unit" "$TMP/$name"
        install_file "$TMP/$name" "$UNITS/$name" 0644
    done
    install_file "$SRC/deploy/README.md" "$ROOT$PREFIX/doc/README.md" 0644
    install_file "$SRC/deploy/MULTI_HOST.md" "$ROOT$PREFIX/doc/MULTI_HOST.md" 0644
    install_file "$SRC/deploy/redis.conf" "$ROOT$PREFIX/doc/redis.conf" 0644
    if ((CHANGED && LIVE_SYSTEMD)); then
        act systemctl daemon-reload
    fi
}

wanted_units() {  # the units listed in the services file (the default list under --dry-run)
    if [[ -f $ETC/services ]]; then
        grep -v '^[[:space:]]*\(#\|$\)' "$ETC/services" | tr -d '[:blank:]'
    else
        default_services | grep -v '^#'
    fi
}

enable_units() {
    local wants="$UNITS/parley.target.wants" unit link
    if [[ -L $ROOT/etc/systemd/system/multi-user.target.wants/parley.target ]]; then
        ok "parley.target enabled"
    else
        systemctl_ enable parley.target
    fi
    local wanted
    wanted=" $(wanted_units | tr '\n' ' ') "
    for unit in $wanted; do
        case "$unit" in parley-*.service | parley-*.timer) ;; *)
            echo "install.sh: $ETC/services: '$unit' is not a Parley unit" >&2; exit 1 ;;
        esac
        if [[ -L $wants/$unit ]]; then
            ok "$unit enabled"
        else
            systemctl_ enable "$unit"
        fi
    done
    # A unit taken off the list is disabled.
    for link in "$wants"/*; do
        [[ -L $link ]] || continue
        unit="$(basename "$link")"
        if [[ $wanted != *" $unit "* ]]; then
            systemctl_ disable "$unit"
        fi
    done
}

install_all() {
    install_user
    install_venv
    install_config
    install_units
    enable_units
    if ((CHANGED)); then
        echo
        echo "Next: put secrets in $ETC/credentials/ (or $ETC/parley.env), review"
        echo "$ETC/parley.toml, then: systemctl start parley.target"
    else
        echo "Nothing to change: Parley is installed as this checkout describes."
    fi
}

# --- uninstall ------------------------------------------------------------------------------
remove() {  # remove PATH...: those that exist
    local p
    for p in "$@"; do
        if [[ -e $p || -L $p ]]; then act rm -rf "$p"; else ok "$p already gone"; fi
    done
}

uninstall_all() {
    local unit units=()
    for unit in "$UNITS"/parley.target.wants/* "$UNITS"/parley.target; do
        [[ -e $unit || -L $unit ]] && units+=("$(basename "$unit")")
    done
    if ((${#units[@]})); then
        if ((LIVE_SYSTEMD)); then
            systemctl_ disable --now "${units[@]}"
        else
            systemctl_ disable "${units[@]}"
        fi
    else
        ok "no Parley unit enabled"
    fi
    for unit in "$SRC"/deploy/systemd/*; do
        remove "$UNITS/$(basename "$unit")"
    done
    if ((LIVE_SYSTEMD)); then act systemctl daemon-reload; fi
    [[ -n $PYTHON ]] || remove "$VENV"
    remove "$ROOT$PREFIX/doc" "$ETC"
    if ((PURGE)); then
        remove "$STATE" "$SYSUSERS"
        if grep -q '^parley:' "$ROOT/etc/passwd" 2>/dev/null; then
            if [[ -n $ROOT ]]; then act userdel --root "$ROOT" parley; else act userdel parley; fi
        fi
    else
        ok "kept $STATE (models, archive) and the parley user; --purge removes them"
    fi
}

if ((UNINSTALL)); then uninstall_all; else install_all; fi
