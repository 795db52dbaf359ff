# $1: 0 on erase, 1 on upgrade. On erase bosun is stopped and disabled; its pods and the
# pinned datapath keep running (run `bosun run --cleanup` first to remove the datapath).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now bosun.service >/dev/null 2>&1 || :
fi
