#!/usr/bin/env bash
# Headless Locust run against a running server (make load-test).
#   USERS (8), SPAWN_RATE (= USERS), DURATION (60s), HOST (127.0.0.1), GRPC_PORT (8001),
#   PROMPTS (seed | mixed | chat | a .jsonl file), VENV (.venv),
#   LOCUST_PROCESSES (1; more forks Locust workers for high concurrency),
#   RESULTS (load_tests/results/<UTC timestamp>), GLM_TOKENIZER (see below),
#   LOCUST_CLASSES (ChatGLMUser: gRPC to Triton; "ChatGLMUser OpenAIUser": the users split
#   evenly between gRPC and the OpenAI-compatible API, compared in summary.md; OpenAIUser
#   alone), OPENAI_PORT (9000; OpenAIUser's server is HOST:OPENAI_PORT), GLM_OPENAI_API_KEY.
# Writes Locust's CSVs, locust_glm_metrics.json, summary.md and throughput_latency.png
# into RESULTS and prints the summary. Exits non-zero when a request failed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
USERS=${USERS:-8}
SPAWN_RATE=${SPAWN_RATE:-$USERS}
DURATION=${DURATION:-60s}
HOST=${HOST:-127.0.0.1}
GRPC_PORT=${GRPC_PORT:-8001}
PROMPTS=${PROMPTS:-seed}
LOCUST_PROCESSES=${LOCUST_PROCESSES:-1}
LOCUST_CLASSES=${LOCUST_CLASSES:-ChatGLMUser}
OPENAI_PORT=${OPENAI_PORT:-9000}
RESULTS=${RESULTS:-load_tests/results/$(date -u +%Y%m%dT%H%M%SZ)}
PY="$VENV/bin/python"
# Prompt lengths of the mixed set are measured with the served model's tokenizer when
# there is one (GLM_TOKENIZER=<ice_text.model>), else estimated for ChatGLM-6B's.
if [ -z "${GLM_TOKENIZER:-}" ] && [ -f "${MODEL:-models/chatglm-tiny}/ice_text.model" ]; then
  export GLM_TOKENIZER="${MODEL:-models/chatglm-tiny}/ice_text.model"
fi

if [ ! -x "$VENV/bin/locust" ]; then
  echo "load-test: $VENV/bin/locust not found; run 'make setup' first" >&2
  exit 2
fi
# Fail fast, with one clear line, when nothing serves the model.
"$PY" -m load_tests.streaming --check "$HOST:$GRPC_PORT" --prefix "load-test: " \
  --hint "; start one with 'make serve'" || exit 1
read -r -a classes <<<"$LOCUST_CLASSES"
if [[ " $LOCUST_CLASSES " == *" OpenAIUser "* ]]; then
  "$PY" -m load_tests.openai_stream --check "$HOST:$OPENAI_PORT" --prefix "load-test: " \
    --hint "; make serve starts it on OPENAI_PORT" || exit 1
fi

mkdir -p "$RESULTS"
extra=()
if [ "$LOCUST_PROCESSES" != "1" ]; then extra+=(--processes "$LOCUST_PROCESSES"); fi
echo "load-test: $USERS users (spawn $SPAWN_RATE/s) for $DURATION on $HOST:$GRPC_PORT, prompts=$PROMPTS, users: $LOCUST_CLASSES -> $RESULTS"
set +e
"$VENV/bin/locust" -f load_tests/locustfile.py --headless --only-summary \
  -u "$USERS" -r "$SPAWN_RATE" -t "$DURATION" --host "$HOST:$GRPC_PORT" \
  --openai-host "$HOST:$OPENAI_PORT" --prompts "$PROMPTS" --csv "$RESULTS/locust" \
  "${extra[@]}" "${classes[@]}" >"$RESULTS/locust.log" 2>&1
rc=$?
set -e
if [ ! -f "$RESULTS/locust_glm_metrics.json" ]; then
  tail -n 30 "$RESULTS/locust.log" >&2
  echo "load-test: Locust wrote no metrics (exit $rc); see $RESULTS/locust.log" >&2
  exit 1
fi
"$PY" -m load_tests.summarize "$RESULTS" \
  --param "users=$USERS" --param "spawn_rate=$SPAWN_RATE" --param "duration=$DURATION" \
  --param "host=$HOST:$GRPC_PORT" --param "prompts=$PROMPTS" --param "user_classes=$LOCUST_CLASSES"
echo
echo "load-test: results in $RESULTS (summary.md, throughput_latency.png, Locust CSVs)"
exit $rc
