# keel's network guest scenario: sourced by guest_init.sh (PID 1 of the minimal guest, installed
# as /etc/keel/net.sh) when the kernel command line says keel.scenario=net, once virtio_net is
# loaded. Uses guest_init.sh's say, fail, param, run_step; its finish follows.
#
# The guest's NIC is keel's vhost-user-net device (keel-vhost-net, its paravisor) behind QEMU's
# virtio-net-pci: the inbox virtio_net driver, nothing else. Two guests run it: the server
# (keel.role=server) runs iperf3 -s for one test (and answers pings meanwhile); the client
# pings the server, then runs iperf3 -c for keel.seconds, during which the host removes and
# restores a VF.
#
# Parameters (keel.NAME=VALUE): role (server, client), ip (this guest's address, /24), peer
# (the other's), seconds (iperf3's time), mtu.
#
# Markers, besides guest_init.sh's:
#   KEEL-STEP-BEGIN job=NAME uptime=S / KEEL-STEP-END job=NAME rc=N uptime=S
#   KEEL-NET-UP dev=eth0 mac=MAC ip=IP mtu=N
#   KEEL-IPERF-JSON-BEGIN / KEEL-IPERF-JSON-END   the client's iperf3 -J report
#   KEEL-SERVER-READY                             the server is about to listen

ROLE=$(param role server)
IP=$(param ip 10.11.0.1)
PEER=$(param peer 10.11.0.2)
SECONDS_=$(param seconds 6)
MTU=$(param mtu 1500)
DMESG_PATTERN='virtio|net|eth|error|warn|bug|call trace|fault|oops|hung|timeout'
dmesg -n 1

step_link() {
    i=0
    while [ ! -d /sys/class/net/eth0 ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -d /sys/class/net/eth0 ] || { echo "no eth0"; ls /sys/class/net; return 1; }
    ip link set lo up
    ip link set eth0 mtu "$MTU" || return 1
    ip link set eth0 up || return 1
    ip addr add "$IP/24" dev eth0 || return 1
    echo "driver: $(basename "$(readlink /sys/class/net/eth0/device/driver)")"
}

step_ping() {
    # The first pings also resolve the peer's MAC (ARP: a broadcast through the switches).
    i=0
    until ping -c 1 -W 2 "$PEER" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 30 ] || { echo "no answer from $PEER"; return 1; }
    done
    ping -c 5 -i 0.2 -W 2 "$PEER"
}

step_iperf_server() {
    # Serves until the host powers the guest off (after the client's report).
    iperf3 -s -B "$IP" -1 >"$OUT/iperf-server.log" 2>&1
    rc=$?
    cat "$OUT/iperf-server.log"
    return "$rc"
}

step_iperf_client() {
    # The server may still be starting: retry the connection for a while.
    i=0
    while :; do
        iperf3 -c "$PEER" -t "$SECONDS_" -J >"$OUT/iperf.json" 2>"$OUT/iperf.err"
        rc=$?
        if [ "$rc" -eq 0 ] || [ "$i" -ge 20 ]; then break; fi
        grep -q "Connection refused\|unable to connect" "$OUT/iperf.json" "$OUT/iperf.err" ||
            break
        i=$((i + 1))
        sleep 0.5
    done
    cat "$OUT/iperf.err"
    return "$rc"
}

# Markers go between steps (a step's output is one block of the console).
run_step link step_link || return 0
say "NET-UP dev=eth0 mac=$(cat /sys/class/net/eth0/address) ip=$IP mtu=$(cat /sys/class/net/eth0/mtu)"
if [ "$ROLE" = server ]; then
    say "SERVER-READY"
    run_step iperf-server step_iperf_server
else
    run_step ping step_ping || return 0
    run_step iperf step_iperf_client
    say "IPERF-JSON-BEGIN"
    cat "$OUT/iperf.json"
    echo
    say "IPERF-JSON-END"
fi
ip -s link show eth0
