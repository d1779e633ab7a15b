#!/usr/bin/env bash
# Start the portal on one machine: migrate, make sure the admin account exists, then run the web
# server and a Celery worker together; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DJANGO_SETTINGS_MODULE=portal.settings
PY=.venv/bin/python
BIND=${PORTAL_BIND:-127.0.0.1:8000}
VAR=${VAR_DIR:-var}
LLM_PID_FILE=$VAR/llm-server/llm-server.pid
mkdir -p "$VAR"

$PY manage.py migrate --noinput
$PY manage.py ensure_admin

pids=()
stop() {
  trap - INT TERM EXIT
  echo "Stopping the web server and the worker..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  # the machine's model process (RAG_LLM_PROCESS=shared), started by the first process that needed the model
  if [ -f "$LLM_PID_FILE" ]; then kill -TERM "$(cat "$LLM_PID_FILE")" 2>/dev/null || true; fi
}
trap stop INT TERM EXIT

$PY -m celery -A portal worker --queues celery,ocr --loglevel INFO --without-gossip --without-mingle &
pids+=($!)
$PY -m celery -A portal --quiet beat --loglevel WARNING --schedule "$VAR/celerybeat-schedule" &
pids+=($!)
# deploy/gunicorn.conf.py: gunicorn's own lines and its access lines in the portal's log format
.venv/bin/gunicorn -c deploy/gunicorn.conf.py portal.wsgi:application --bind "$BIND" --workers 1 --threads 8 \
  --timeout 300 &
pids+=($!)
echo "Knowledge Portal: http://$BIND/  (admin: http://$BIND/admin/)  Ctrl-C to stop."
# Stop everything as soon as one of them exits.
wait -n
