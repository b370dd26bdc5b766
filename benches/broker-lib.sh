# Shared by the bench scripts that start a release broker themselves (sourced, not run):
# a free loopback port, and stopping the broker whose pid is in $broker_pid.

# A port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

broker_pid=
# SIGTERM to the broker started last (if any), and wait for it to exit.
stop_broker() {
    if [ -n "$broker_pid" ]; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
        broker_pid=
    fi
}
