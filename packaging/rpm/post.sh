# $1: 1 on install, 2 or more on upgrade. Enables bosun.service; starts it only on a node
# that is configured (a pod source in /etc/bosun/config.yaml or BOSUN_ARGS); on an upgrade
# restarts it only if it was running, and the new bosun adopts the pods and the datapath.
mkdir -p /etc/kubernetes/manifests /var/lib/bosun
chmod 0700 /var/lib/bosun
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl enable bosun.service >/dev/null 2>&1 || :
    if [ "$1" -ge 2 ]; then
        systemctl try-restart bosun.service >/dev/null 2>&1 || :
    elif grep -Eq '^[[:space:]]*staticPodPath:[[:space:]]*[^[:space:]#]' /etc/bosun/config.yaml 2>/dev/null \
        || { [ -r /etc/sysconfig/bosun ] && . /etc/sysconfig/bosun && case " ${BOSUN_ARGS:-} " in *" --kubeconfig"* | *" --pod-manifest-path"*) true ;; *) false ;; esac; }; then
        systemctl start bosun.service >/dev/null 2>&1 || :
    else
        echo "bosun: enabled, not started: give it a pod source (staticPodPath in /etc/bosun/config.yaml, or --kubeconfig in /etc/sysconfig/bosun), then: systemctl start bosun" >&2
    fi
fi
