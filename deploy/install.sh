#!/usr/bin/env bash
# Install Parley as systemd services on one host (run as root from a checkout).
#   GPU hosts: PARLEY_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ./deploy/install.sh
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/parley
id parley >/dev/null 2>&1 || useradd --system --home /var/lib/parley --shell /usr/sbin/nologin parley
install -d -o parley -g parley /var/lib/parley
install -d -m 0750 -g parley /etc/parley
rsync -a --delete --exclude .venv --exclude .git "$SRC/" "$PREFIX/"
python3 -m venv "$PREFIX/.venv"
if [[ -n "${PARLEY_TORCH:-}" ]]; then
    # shellcheck disable=SC2086
    "$PREFIX/.venv/bin/pip" install $PARLEY_TORCH
fi
"$PREFIX/.venv/bin/pip" install "$PREFIX[engine]"
[[ -f /etc/parley/parley.toml ]] || install -m 0640 -g parley "$SRC/deploy/parley.toml.example" /etc/parley/parley.toml
[[ -f /etc/parley/parley.env ]] || install -m 0640 -g parley "$SRC/deploy/parley.env.example" /etc/parley/parley.env
install -m 0644 "$SRC"/deploy/systemd/* /etc/systemd/system/
systemctl daemon-reload
echo "Installed. Edit /etc/parley/parley.toml and parley.env, then:"
echo "  systemctl enable --now parley-engine@0 parley-adapter-web parley-train.timer"
