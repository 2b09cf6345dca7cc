#!/usr/bin/env bash
# docker/compose.yaml for real, end to end, on any machine with a Docker engine:
#
#   bash docker/e2e.sh
#
# 1. images: Docker Hub's python and postgres images where Docker Hub answers; elsewhere
#    stand-ins built from Debian's packages (a bookworm root filesystem by mmdebstrap with
#    Python 3.11, and PostgreSQL on it), and every wheel the image needs built on this host
#    (pip wheel, the CPU build of torch included) so that the image installs offline;
# 2. the compose stack up with the digits spec, E2E_TRIALS trials (default 12) and two worker
#    containers; one worker container killed while its trial runs;
# 3. the study must end with exactly the planned number of finished trials, the killed trial
#    failed (and retried), nothing left running;
# 4. the dashboard answers on its loopback port and lists the study, with no password in it;
# 5. `trials`, `export --trial best` and `eval` of the exported file, in one-off containers on
#    the same database; the image runs as a non-root user and holds no credential;
# 6. `down -v` leaves nothing running.
#
# One line per step with its time; on any failure the step is named, the stack's last log lines
# shown, and the exit code is non-zero. Containers, volumes, networks and the images built here
# are removed on exit, also on failure; E2E_KEEP_IMAGES=1 keeps the images (the stand-ins, and
# the autoprune image, tagged by a hash of what it is built from, so that a later run of the
# same sources skips the build). Settings: E2E_TRIALS, E2E_PORT, E2E_PROJECT, and DB_PASSWORD
# (the password autoprune uses; the server's is autoprune: a wrong one fails the "up" step).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${E2E_PROJECT:-autoprune-e2e}"
export COMPOSE_PROJECT_NAME="$PROJECT" TRIALS="${E2E_TRIALS:-12}" JOBS=1 DASHBOARD_PORT="${E2E_PORT:-18080}"
SOURCES="$(find docker/Dockerfile pyproject.toml README.md autoprune studies -type f \( -name '*.py' -o -name '*.toml' \
    -o -name Dockerfile -o -name '*.md' \) -not -path '*/__pycache__/*' | sort | xargs cat | sha256sum | cut -c1-12)"
export AUTOPRUNE_IMAGE="autoprune-e2e/autoprune:$SOURCES"
COMPOSE=(docker-compose -f docker/compose.yaml)
STUDY=digits-lenet5
STORAGE="postgresql://autoprune@postgres/autoprune"  # the password comes from PGPASSWORD (compose.yaml)
STAND_IN_BASE="autoprune-e2e/python:3.11-bookworm"
STAND_IN_POSTGRES="autoprune-e2e/postgres:15-bookworm"
TMP="$(mktemp -d)"
STEP=""
STARTED=$(date +%s)
STEP_STARTED=$STARTED

say() { echo "e2e: $*"; }
step() {
    [ -n "$STEP" ] && say "ok: $STEP ($(( $(date +%s) - STEP_STARTED )) s)"
    STEP="$1"
    STEP_STARTED=$(date +%s)
    say "$STEP ..."
}
fail() { echo "e2e: $*" >&2; exit 1; }
sql() { docker exec "$("${COMPOSE[@]}" ps -q postgres)" psql -U autoprune -d autoprune -tAc "$1" 2>/dev/null | tr -d '[:space:]'; }
cleanup() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "e2e: FAILED at step: $STEP (after $(( $(date +%s) - STEP_STARTED )) s)" >&2
        "${COMPOSE[@]}" logs --tail 5 2>/dev/null | sed 's/^/e2e:   /' >&2 || true
    fi
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    if [ "${E2E_KEEP_IMAGES:-}" != 1 ]; then
        docker rmi -f "$AUTOPRUNE_IMAGE" "$STAND_IN_POSTGRES" "$STAND_IN_BASE" >/dev/null 2>&1 || true
    fi
    docker image prune -f --filter label=autoprune.stage=build >/dev/null 2>&1 || true  # the build stage's leftovers
    rm -rf "$TMP" docker/wheels/*.whl
    [ "$status" -eq 0 ] && say "passed in $(( $(date +%s) - STARTED )) s"
    exit "$status"
}
trap cleanup EXIT

step "engine"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (start dockerd, as root)"
command -v docker-compose >/dev/null || fail "docker-compose is not installed (apt-get install docker-compose)"

step "images"
if timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    say "Docker Hub answers: the default images"
else
    say "Docker Hub does not answer: stand-ins from Debian's packages"
    if ! docker image inspect "$STAND_IN_BASE" >/dev/null 2>&1; then
        command -v mmdebstrap >/dev/null || fail "mmdebstrap is needed for the stand-in base (apt-get install mmdebstrap)"
        mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,passwd \
            --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            bookworm "$TMP/rootfs.tar" http://deb.debian.org/debian
        docker import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["python3"]' "$TMP/rootfs.tar" "$STAND_IN_BASE" >/dev/null
        rm -f "$TMP/rootfs.tar"
    fi
    if ! docker image inspect "$STAND_IN_POSTGRES" >/dev/null 2>&1; then
        docker build -q -f docker/e2e/postgres.Dockerfile --build-arg BASE="$STAND_IN_BASE" \
            -t "$STAND_IN_POSTGRES" docker/e2e >/dev/null
    fi
    if ! docker image inspect "$AUTOPRUNE_IMAGE" >/dev/null 2>&1; then
        "${PYTHON:-python3}" -m pip wheel -q --wheel-dir docker/wheels torch==2.13.0 . >/dev/null \
            || fail "pip could not gather the wheels for an offline image"
    fi
    export BASE_IMAGE="$STAND_IN_BASE" POSTGRES_IMAGE="$STAND_IN_POSTGRES" WHEELS=docker/wheels OFFLINE=1
fi

step "build"
if docker image inspect "$AUTOPRUNE_IMAGE" >/dev/null 2>&1; then
    say "$AUTOPRUNE_IMAGE is built from these very sources already (kept by an earlier run)"
else
    "${COMPOSE[@]}" build -q >/dev/null
fi
say "image $AUTOPRUNE_IMAGE: $(docker image inspect -f '{{.Size}}' "$AUTOPRUNE_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
[ "$(docker image inspect -f '{{.Config.User}}' "$AUTOPRUNE_IMAGE")" = 1000 ] || fail "the image does not run as user 1000"
if docker image inspect -f '{{json .Config.Env}}' "$AUTOPRUNE_IMAGE" | grep -qi 'password'; then
    fail "the image holds a credential in its environment"
fi

step "up"
"${COMPOSE[@]}" up -d --scale worker=2 >/dev/null 2>&1 || true
for _ in $(seq 600); do
    setup="$("${COMPOSE[@]}" ps -q setup)"
    [ -n "$setup" ] && [ "$(docker inspect -f '{{.State.Status}}' "$setup")" = exited ] && break
    sleep 0.5
done
[ -n "$setup" ] || fail "the setup container never started"
code="$(docker inspect -f '{{.State.ExitCode}}' "$setup")"
[ "$code" = 0 ] || fail "setup exited $code: $(docker logs --tail 1 "$setup" 2>&1)"
workers="$("${COMPOSE[@]}" ps -q worker | wc -l)"
[ "$workers" = 2 ] || fail "expected 2 worker containers, found $workers"
for container in $("${COMPOSE[@]}" ps -q); do  # a command line is readable by every local user (ps)
    if docker inspect -f '{{json .Config.Cmd}}' "$container" | grep -q ":${DB_PASSWORD:-autoprune}@"; then
        fail "container ${container:0:12} has the database password on its command line"
    fi
done

step "kill a worker"
# Each trial records the worker that runs it (hostname:pid; a container's hostname is the
# start of its id): kill the container that runs a trial, not just any worker.
victim=""
for _ in $(seq 600); do
    host="$(sql "SELECT a.value_json FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id
                 WHERE t.state = 'RUNNING' AND a.key = 'worker' LIMIT 1" | tr -d '"' | cut -d: -f1)"
    if [ -n "$host" ]; then
        for container in $("${COMPOSE[@]}" ps -q worker); do
            [[ "$container" == "$host"* ]] && docker kill "$container" >/dev/null 2>&1 && { victim="$container"; break; }
        done
        [ -n "$victim" ] && break
    fi
    sleep 0.5
done
[ -n "$victim" ] || fail "no worker container could be killed while a trial ran"
say "killed worker container ${victim:0:12} with a trial running"

step "study complete"
for _ in $(seq 900); do
    finished="$(sql "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")"
    running="$(sql "SELECT count(*) FROM trials WHERE state IN ('RUNNING', 'WAITING')")"
    [ "${finished:-0}" -ge "$TRIALS" ] && [ "${running:-1}" = 0 ] && break
    sleep 1
done
failed="$(sql "SELECT count(*) FROM trials WHERE state = 'FAIL'")"
retried="$(sql "SELECT count(*) FROM trial_system_attributes WHERE key = 'failed_trial'")"
say "finished $finished of $TRIALS, failed $failed (retried $retried), running or waiting $running"
[ "$finished" = "$TRIALS" ] || fail "the study holds $finished finished trials, not $TRIALS"
[ "$running" = 0 ] || fail "$running trials are left running or waiting"
[ "$failed" -ge 1 ] || fail "the killed worker's trial was not failed"
[ "$retried" -ge 1 ] || fail "the killed worker's trial was not retried"

step "dashboard"
studies="$(curl -fsS "http://127.0.0.1:$DASHBOARD_PORT/api/studies")" || fail "the dashboard does not answer on 127.0.0.1:$DASHBOARD_PORT"
echo "$studies" | grep -q "\"$STUDY\"" || fail "the dashboard does not list $STUDY"
if echo "$studies" | grep -q ":${DB_PASSWORD:-autoprune}@"; then fail "the dashboard shows the database password"; fi

step "trials, export and eval"
# The container (uid 1000) writes only into a folder of its own; the host's files stay in the
# 0700 folder above it, where no other local user can plant a link.
mkdir "$TMP/out"
chown 1000 "$TMP/out" 2>/dev/null || chmod 777 "$TMP/out"  # not root: inside the 0700 folder all the same
run=("${COMPOSE[@]}" run --rm --no-deps -v "$TMP/out:/out" worker)
"${run[@]}" trials --storage "$STORAGE" --json >"$TMP/trials.json" 2>/dev/null
grep -q '"state": "COMPLETE"' "$TMP/trials.json" || fail "trials lists no completed trial"
"${run[@]}" export --storage "$STORAGE" --trial best --out /out/best.apk >/dev/null 2>&1 || fail "export --trial best failed"
"${run[@]}" eval /out/best.apk --no-latency --json >"$TMP/eval.json" 2>/dev/null || fail "eval of the exported file failed"
say "exported the best trial: $(stat -c %s "$TMP/out/best.apk") bytes, it evaluates"

step "down"
"${COMPOSE[@]}" down -v >/dev/null 2>&1
left="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
[ "$left" = 0 ] || fail "$left containers are left after down"
volumes="$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)"
[ "$volumes" = 0 ] || fail "$volumes volumes are left after down -v"
say "ok: down ($(( $(date +%s) - STEP_STARTED )) s)"
STEP="cleanup"
