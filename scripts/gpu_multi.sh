#!/usr/bin/env bash
# Issue 9 on a machine with 2 GPUs, in ONE device call (< 10 minutes): one chatglm_decoder
# instance per GPU (configs/gpu.pbtxt: instance_group [ { count: 1 kind: KIND_GPU } ] with no
# `gpus:` list, so Triton makes one instance on every visible GPU; serve.sh narrows the
# visible GPUs with CUDA_VISIBLE_DEVICES=$GPUS) and the throughput scaling from 1 to 2 GPUs.
#   1. the venv and the backend build: scripts/gpu_soak.sh setup (same layout as the soak);
#   2. a config-only ChatGLM-6B checkpoint (glmserve.bench.REAL_CONFIG + a placeholder
#      model.safetensors; random fp16 weights), as reliability_soak.sh makes it;
#   3. for GPUS in $CONFIGS ("0" then "0,1"): the server started as `make serve` does it
#      (scripts/serve.sh with DEVICE=cuda GPUS=... MODEL=... TRITON_ARGS=
#      "--backend-config=chatglm,random_weights=true"), the instances it made (log lines and
#      the metrics' instance labels), GPU memory per GPU, then load_tests/http_bench.py sweep
#      (seed workload, closed loop) at each concurrency of $CONC for $DUR seconds, the
#      per-instance metrics, and the server stopped;
#   4. $OUT/multi_gpu.md: cards, instances, tokens/s, TTFT, requests, failures and the 2-GPU /
#      1-GPU ratio per concurrency; $OUT/phases.json and one sweep JSON per configuration.
# max_batch_size / max_running_seqs are 256 per instance: concurrency 512 is where 2 GPUs show.
# Phases and sweep points are skipped when the time left ($BUDGET_S after the start) is short.
#
#   OUT=/tmp/gm bash scripts/gpu_multi.sh            # carry .gpucarry/tritonserver.tar.xz, .soakcarry
# CPU dry run (one CPU phase; the 2-GPU phase is skipped, no GPU):
#   DEVICE=cpu VENV=.venv CK_CONFIG=models/chatglm-tiny/config.json CONC="8 16" DUR=8 \
#     OUT=/tmp/gm bash scripts/gpu_multi.sh
#
# Environment (defaults): DEVICE (cuda), CONFIGS ("0 0,1"), CONC ("64 256 512"), DUR (25),
# PAUSE (2), BUDGET_S (540), PORT (18310: HTTP; gRPC +1, metrics +2), VENV (/tmp/sv), BUILD
# (build/e2e), WORK (/tmp/gpu_multi), OUT (/tmp/gpu_multi_out), CK_CONFIG, BENCH_PY (the client's
# python, $VENV/bin/python), and gpu_soak.sh's setup knobs (CARRY_TAR, SOAK_WHEELS, SETUP, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
DEVICE=${DEVICE:-cuda}
CONFIGS=${CONFIGS:-0 0,1}
CONC=${CONC:-64 256 512}
DUR=${DUR:-25}
PAUSE=${PAUSE:-2}
BUDGET_S=${BUDGET_S:-540}
PORT=${PORT:-18310}
VENV=${VENV:-/tmp/sv}
BUILD=${BUILD:-build/e2e}
W=${WORK:-/tmp/gpu_multi}
OUT=${OUT:-/tmp/gpu_multi_out}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
BENCH_PY=${BENCH_PY:-$VENV/bin/python}
rm -rf "$W"
mkdir -p "$W" "$OUT"
log() { echo "gpu_multi [$(($(date +%s) - T0))s]: $*" | tee -a "$W/run.log"; }
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
finish() {
  cp "$W/run.log" "$OUT/run.log" 2>/dev/null
  log "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
}

# ---- 1. venv + backend ---------------------------------------------------------------------
DEVICE="$DEVICE" VENV="$VENV" BUILD="$BUILD" bash scripts/gpu_soak.sh setup 2>&1 | tee -a "$W/run.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "setup failed"; finish; exit 1; }

# ---- 2. checkpoint, cards ----------------------------------------------------------------------
CK="$W/ck"
"$VENV/bin/python" -m glmserve.config_only "$CK" ${CK_CONFIG:+--config "$CK_CONFIG"} \
  || { log "checkpoint failed"; finish; exit 1; }
NGPU=0
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >"$W/cards.csv" 2>/dev/null
  NGPU=$(grep -c . "$W/cards.csv")
fi
touch "$W/cards.csv"
log "$NGPU GPU(s) visible: $(tr '\n' ';' <"$W/cards.csv")"
[ "$DEVICE" = cuda ] && [ "$NGPU" -eq 0 ] && { log "DEVICE=cuda but no GPU visible"; finish; exit 1; }
smi_mem() { command -v nvidia-smi >/dev/null 2>&1 &&
  nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits 2>/dev/null; }

# ---- 3. phases -------------------------------------------------------------------------------------
URL=127.0.0.1:$PORT
n_conc=$(wc -w <<<"$CONC")
first=1
for G in $CONFIGS; do
  need=$(tr ',' '\n' <<<"$G" | grep -c .)
  tag=${G//,/-}
  label=$G
  [ "$DEVICE" != cuda ] && [ "$first" = 1 ] && tag=cpu label=cpu   # the CPU run: no GPUS
  P="$W/phase_$tag"
  mkdir -p "$P"
  echo "$label" >"$P/gpus"
  if [ "$DEVICE" != cuda ] && [ "$first" != 1 ]; then
    log "GPUS=$label: skipped (DEVICE=$DEVICE: only the first configuration runs, on the CPU; needs $need GPUs, $NGPU visible)"
    echo "skipped: needs $need GPUs, $NGPU visible (DEVICE=$DEVICE)" >"$P/skipped"
    continue
  fi
  first=0
  if [ "$DEVICE" = cuda ] && [ "$need" -gt "$NGPU" ]; then
    log "GPUS=$label: skipped (needs $need GPUs, $NGPU visible)"
    echo "skipped: needs $need GPUs, $NGPU visible" >"$P/skipped"
    continue
  fi
  est=$((60 + DUR + 15 + 40))   # start, one sweep point, stop
  if [ "$(left)" -lt "$est" ]; then
    log "GPUS=$label: skipped ($(left) s left, a phase needs at least $est)"
    echo "skipped: out of time ($(left) s left)" >"$P/skipped"
    continue
  fi
  log "GPUS=$label: starting the server (serve.sh, as make serve DEVICE=$DEVICE GPUS=${label#cpu})"
  t_start=$(date +%s.%N)
  HTTP_PORT=$PORT GRPC_PORT=$((PORT + 1)) METRICS_PORT=$((PORT + 2)) DEVICE="$DEVICE" \
    GPUS=$([ "$DEVICE" = cuda ] && echo "$G") MODEL="$CK" BUILD="$BUILD" VENV="$VENV" \
    TRITON_ARGS="--backend-config=chatglm,random_weights=true" \
    bash scripts/serve.sh >"$P/server.log" 2>&1 &
  SPID=$!   # serve.sh execs tritonserver
  ok=0
  for _ in $(seq 480); do
    curl -sf "$URL/v2/health/ready" >/dev/null && { ok=1; break; }
    kill -0 $SPID 2>/dev/null || break
    [ "$(left)" -lt 40 ] && break
    sleep 0.5
  done
  if [ $ok != 1 ]; then
    log "GPUS=$label: server not ready"
    tail -n 30 "$P/server.log" | tee -a "$W/run.log"
    echo "failed: server not ready" >"$P/skipped"
    kill -9 $SPID 2>/dev/null
    wait $SPID 2>/dev/null
    tail -n 200 "$P/server.log" >"$OUT/server_gpus$tag.log"
    continue
  fi
  "$BENCH_PY" -c "import time; print(f'{time.time() - $t_start:.1f}')" >"$P/ready_s"
  log "GPUS=$label: ready in $(cat "$P/ready_s") s"
  grep -E "chatglm_decoder instance .*(checkpoint|ready:)" "$P/server.log" | sed 's/^.*\] "//; s/"$//' >"$P/instances.txt"
  grep -E '^\| chatglm_decoder' "$P/server.log" >>"$P/instances.txt"
  tee -a "$W/run.log" <"$P/instances.txt"
  smi_mem >"$P/smi_load.csv"
  [ -s "$P/smi_load.csv" ] && log "GPU memory after load (index, used MiB, total MiB, util %): $(tr '\n' ';' <"$P/smi_load.csv")"
  # one warm-up request before the measurements
  IDS=$("$BENCH_PY" -c "import json; c = json.load(open('$CK/config.json')); print(list(range(100, 116)) + [c['gmask_token_id'], c['bos_token_id']])")
  curl -s -X POST "$URL/v2/models/chatglm_decoder/generate" \
    -d "{\"input_ids\": $IDS, \"max_tokens\": 16, \"ignore_eos\": true}" >"$P/warm.json"
  grep -q output_ids "$P/warm.json" || log "GPUS=$label: warm-up request failed: $(head -c 300 "$P/warm.json")"
  i=0
  for c in $CONC; do
    i=$((i + 1))
    if [ "$(left)" -lt $((DUR + 15 + 45)) ]; then
      log "GPUS=$label: concurrency $c skipped ($(left) s left)"
      continue
    fi
    "$BENCH_PY" load_tests/http_bench.py sweep --url "$URL" --config "$CK/config.json" --conc "$c" \
      -d "$DUR" --out "$P/b" --name "c$c" 2>&1 | grep -E "^C=|rror|not ready" | tee -a "$W/run.log"
    [ "$i" -lt "$n_conc" ] && sleep "$PAUSE"
  done
  smi_mem >"$P/smi_after.csv"
  curl -s "127.0.0.1:$((PORT + 2))/metrics" >"$P/metrics.txt"
  grep -E '^glm_(generated_tokens_total|max_batch_size|kv_blocks_total|requests_total|engine_healthy)\{' "$P/metrics.txt" |
    tee -a "$W/run.log" >/dev/null
  kill -TERM $SPID 2>/dev/null
  for _ in $(seq 90); do kill -0 $SPID 2>/dev/null || break; sleep 0.5; done
  if kill -0 $SPID 2>/dev/null; then log "GPUS=$label: server still up 45 s after SIGTERM: SIGKILL"; kill -9 $SPID; fi
  wait $SPID 2>/dev/null
  echo $? >"$P/server_rc"
  log "GPUS=$label: server stopped (exit code $(cat "$P/server_rc"))"
  tail -n 200 "$P/server.log" >"$OUT/server_gpus$tag.log"
done

# ---- 4. report -------------------------------------------------------------------------------------
"$BENCH_PY" - "$W" "$OUT" "$DEVICE" "$CONC" "$DUR" <<'PYEOF' 2>&1 | tee -a "$W/run.log"
import json, re, sys, time
from pathlib import Path

w, out, device, conc, dur = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
conc = [int(c) for c in conc.split()]


def metric_rows(text):
    """{instance: {metric: value}} of the glm_* metrics (requests_total summed by outcome)."""
    per = {}
    for line in text.splitlines():
        m = re.match(r"^(glm_\w+)\{([^}]*)\}\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        inst = labels.get("instance", "?")
        if "device" in labels:  # the instances of one group on different GPUs share a name
            inst += " on " + labels["device"]
        name = m.group(1)
        if name == "glm_requests_total":
            name = f"requests_{labels.get('outcome', '?')}"
        per.setdefault(inst, {})[name] = float(m.group(3))
    return per


def read(p, default=""):
    return p.read_text().strip() if p.exists() else default


phases = []
for p in sorted(w.glob("phase_*"), key=lambda p: (p.name != "phase_cpu", len(p.name), p.name)):
    tag = p.name[len("phase_"):]
    ph = {"gpus": read(p / "gpus"), "tag": tag, "skipped": read(p / "skipped") or None}
    inst = read(p / "instances.txt").splitlines()
    ph["instance_log"] = inst
    # one instance per (name, device): Triton names the instances of a group alike on every GPU
    ph["instances"] = sorted({m.group(1) + "@" + m.group(2) for l in inst
                              if (m := re.search(r"instance (\S+): checkpoint .*?, device ([^,]+)", l))})
    ph["instance_devices"] = sorted({f"{m.group(1)} -> {m.group(2)}" for l in inst
                                     if (m := re.search(r"instance (\S+): checkpoint .*?, device ([^,]+)", l))})
    ph["ready_s"] = read(p / "ready_s") or None
    ph["smi_load"] = read(p / "smi_load.csv").splitlines()
    ph["smi_after"] = read(p / "smi_after.csv").splitlines()
    ph["metrics"] = metric_rows(read(p / "metrics.txt"))
    ph["server_rc"] = read(p / "server_rc") or None
    rows = []
    for c in conc:
        f = p / "b" / f"c{c}.json"
        if f.exists():
            rows.extend(json.loads(f.read_text())["rows"])
    ph["rows"] = rows
    n_expected = 1 if device != "cuda" else len([g for g in ph["gpus"].split(",") if g])
    ph["expected_instances"] = n_expected
    ph["instances_ok"] = (not ph["skipped"]) and len(ph["instances"]) == n_expected
    phases.append(ph)
    if rows:
        (out / f"sweep_gpus{tag}.json").write_text(json.dumps({"gpus": ph["gpus"], "rows": rows}, indent=1))
(out / "phases.json").write_text(json.dumps(phases, indent=1))

cards = read(w / "cards.csv").splitlines()
f = lambda x, nd=1: "-" if x is None else f"{x:,.{nd}f}"  # noqa: E731
L = [f"# Multi-GPU serving (issue 9): one chatglm_decoder instance per GPU", "",
     f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {device}; "
     f"cards (index, name, memory, driver): " + ("; ".join(cards) if cards else "none"), "",
     "Server: `scripts/serve.sh` as `make serve DEVICE=cuda GPUS=<ids> MODEL=<config-only ChatGLM-6B> "
     "TRITON_ARGS=--backend-config=chatglm,random_weights=true` (chatglm_decoder alone, random fp16 "
     "weights, `configs/gpu.pbtxt`: `instance_group [ { count: 1 kind: KIND_GPU } ]`, "
     "max_batch_size 256 and max_running_seqs 256 per instance, KV cache 0.9 of free memory per GPU).",
     f"Client: `load_tests/http_bench.py sweep`, seed workload (16 ids + [gMASK] <sop>, exactly 150 "
     f"new tokens, ignore_eos), HTTP generate_stream, closed loop, {dur} s per concurrency; tokens/s "
     f"over the steady window (the first 3 s left out).", "",
     "## Instances", "",
     "| GPUS | instances (expected) | instance -> device | ready after (s) | GPU memory used after load, MiB (index:used) | after the sweep | server exit |",
     "|---|---|---|---:|---|---|---:|"]
def smi(lines):
    return ", ".join(f"{a.split(',')[0].strip()}:{a.split(',')[1].strip()}" for a in lines) or "-"
for ph in phases:
    if ph["skipped"]:
        L.append(f"| {ph['gpus'] or '-'} | {ph['skipped']} | | | | | |")
        continue
    ok = "ok" if ph["instances_ok"] else "MISMATCH"
    L.append(f"| {ph['gpus']} | {len(ph['instances'])} ({ph['expected_instances']}, {ok}) | "
             f"{'; '.join(ph['instance_devices']) or '-'} | {ph['ready_s'] or '-'} | {smi(ph['smi_load'])} | "
             f"{smi(ph['smi_after'])} | {ph['server_rc'] or '-'} |")
run = [ph for ph in phases if ph["rows"]]
L += ["", "## Throughput", "",
      "| GPUs | concurrency | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50/p99 ms | requests | failures | client CPU max | scaling vs GPUS=" + (run[0]["gpus"] if run else "-") + " |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
base = {}
if run:
    base = {r["concurrency"]: r["tokens_per_s"] for r in run[0]["rows"]}
for ph in run:
    for r in ph["rows"]:
        b = base.get(r["concurrency"])
        ratio = f"{r['tokens_per_s'] / b:.2f}x" if ph is not run[0] and b else ("1.00x" if ph is run[0] else "-")
        L.append(f"| {ph['gpus'] if device == 'cuda' else 'cpu'} | {r['concurrency']} | {f(r['tokens_per_s'], 0)} | "
                 f"{f(r['ttft_ms_p50'])} | {f(r['ttft_ms_p99'])} | {f(r['itl_ms_p50'], 2)}/{f(r['itl_ms_p99'], 2)} | "
                 f"{r['requests']} | {r['failures']} | {r.get('client_cpu_max_frac', '-')} | {ratio} |")
if len(run) >= 2:
    L += ["", "Scaling (tokens/s of GPUS=" + run[-1]["gpus"] + " over GPUS=" + run[0]["gpus"] + "): " + ", ".join(
        f"C={r['concurrency']}: {r['tokens_per_s'] / base[r['concurrency']]:.2f}x"
        for r in run[-1]["rows"] if base.get(r["concurrency"]))]
L += ["", "## Per-instance work (metrics port, end of each phase)", "",
      "| GPUS | instance | generated tokens | requests ok | largest step batch | KV blocks | healthy |",
      "|---|---|---:|---:|---:|---:|---:|"]
for ph in run:
    for inst, m in sorted(ph["metrics"].items()):
        L.append(f"| {ph['gpus']} | {inst} | {f(m.get('glm_generated_tokens_total'), 0)} | "
                 f"{f(m.get('requests_ok'), 0)} | {f(m.get('glm_max_batch_size'), 0)} | "
                 f"{f(m.get('glm_kv_blocks_total'), 0)} | {f(m.get('glm_engine_healthy'), 0)} |")
errs = [(ph["gpus"], r["concurrency"], r["errors"]) for ph in run for r in ph["rows"] if r.get("errors")]
if errs:
    L += ["", "## Errors (first 5 distinct per run)", ""] + [f"- GPUS={g} C={c}: {e}" for g, c, e in errs]
text = "\n".join(L) + "\n"
(out / "multi_gpu.md").write_text(text)
print(text)
PYEOF
finish
