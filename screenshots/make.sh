#!/usr/bin/env bash
# Re-make every screenshot in screenshots/ from the real programs:
#
#     bash screenshots/make.sh        (from the repository root)
#     bash screenshots/make.sh 08     (only picture 08)
#
# Pictures 01 to 07 are one story, each needing the one before: asking for
# any of them makes all seven. Picture 08 (the newer commands) has a server
# and users of its own, and can be made alone.
#
# It starts a virtual X display (Xvfb), opens real xterm windows with a shell
# in each, types the commands into them with xdotool (server.py, client.py,
# nc) and photographs the windows with ImageMagick's import; the pictures of
# several windows are put side by side with a label over each. Everything
# runs on 127.0.0.1 (port 4321, or a free one if 4321 is taken). Missing
# tools are installed with apt-get first (Debian/Ubuntu).
#
# Waiting is done by watching what each window shows: every shell runs under
# script(1), which copies the terminal's output into a log file that we poll
# (with a deadline) for the expected text.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=$ROOT/screenshots
PORT=4321
COLS=90 ROWS=26                 # each terminal window, in characters
FONT='DejaVu Sans Mono' FONT_SIZE=11
WAIT_STEPS=150 WAIT_STEP=0.1    # a wait gives up after 150 x 0.1 s = 15 s

say() { printf 'make.sh: %s\n' "$*" >&2; }

# Which pictures to make: every one without arguments.
STORY=0 NEW_COMMANDS=0
(($#)) || STORY=1 NEW_COMMANDS=1
for scene in "$@"; do
    case $scene in
        0[1-7] | [1-7]) STORY=1 ;;
        08 | 8) NEW_COMMANDS=1 ;;
        *) say "no picture '$scene'; they are 01 to 08"; exit 2 ;;
    esac
done

# --- Tools ------------------------------------------------------------------

install_missing() {
    local -A package=([Xvfb]=xvfb [xterm]=xterm [xdotool]=xdotool
                      [import]=imagemagick [montage]=imagemagick
                      [nc]=netcat-openbsd [script]=bsdutils [ps]=procps
                      [fc-list]=fontconfig)
    local -a wanted=()
    local cmd fonts
    for cmd in "${!package[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || wanted+=("${package[$cmd]}")
    done
    fonts=$(fc-list 2>/dev/null || true)
    [[ $fonts == *"DejaVu Sans Mono"* ]] || wanted+=(fonts-dejavu-core)
    ((${#wanted[@]})) || return 0
    mapfile -t wanted < <(printf '%s\n' "${wanted[@]}" | sort -u)
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    say "installing ${wanted[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends "${wanted[@]}" >/dev/null
}

install_missing

# --- Clean-up: only what this script started, by process id ----------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chat-screenshots.XXXXXX")
XVFB_PID=""
declare -A TERM_PID=() WID=() FROM=()

descendants() {  # every process below $1, deepest first
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
        descendants "$child"
        echo "$child"
    done
}

cleanup() {
    local status=$? name pid
    # A background job forked from this shell can get here too before it
    # starts its program; only the script itself cleans up.
    [[ $BASHPID == "$$" ]] || exit "$status"
    trap - EXIT
    for name in "${!TERM_PID[@]}"; do
        pid=${TERM_PID[$name]}
        # The programs running in the window (server, client, nc, shell)
        # first, then the xterm itself.
        kill $(descendants "$pid") "$pid" 2>/dev/null || true
    done
    [[ -z $XVFB_PID ]] || kill "$XVFB_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if ((status != 0)); then
        for name in "${!TERM_PID[@]}"; do
            [[ -f $TMP/$name.log ]] || continue
            say "--- last lines in the $name window:"
            sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$TMP/$name.log" | tail -n 8 >&2
        done
        say "failed (status $status)"
    fi
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The display and the windows --------------------------------------------

port_is_free() {
    # SO_REUSEADDR as the server sets it: old connections in TIME_WAIT
    # from a previous run do not stop it from listening.
    python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

if ! port_is_free "$PORT"; then
    PORT=$(python3 -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    say "port 4321 is in use; using $PORT (the pictures will show it)"
fi
PORT_ARG=""
[[ $PORT == 4321 ]] || PORT_ARG=" --port $PORT"

# Xvfb picks a free display number itself and writes it to fd 3.
Xvfb -displayfd 3 -screen 0 2560x1150x24 -nolisten tcp \
    3>"$TMP/display" 2>"$TMP/xvfb.log" &
XVFB_PID=$!
for ((i = 0; i < WAIT_STEPS; i++)); do
    [[ -s $TMP/display ]] && break
    kill -0 "$XVFB_PID" 2>/dev/null || { say "Xvfb did not start"; exit 1; }
    sleep "$WAIT_STEP"
done
[[ -s $TMP/display ]] || { say "Xvfb did not start in time"; exit 1; }
export DISPLAY=":$(tr -dc 0-9 <"$TMP/display")"
for ((i = 0; i < WAIT_STEPS; i++)); do
    xdotool getdisplaygeometry >/dev/null 2>&1 && break
    sleep "$WAIT_STEP"
done

cat >"$TMP/bashrc" <<EOF
PS1='\$ '
unset PROMPT_COMMAND
HISTFILE=/dev/null
export PYTHONDONTWRITEBYTECODE=1
cd '$ROOT'
EOF

# open_window NAME COLUMN ROW: an xterm titled NAME at that place on the
# screen (a 3 x 2 grid, no overlaps), running an interactive bash whose
# output is also copied to $TMP/NAME.log.
declare -A PLACE=()
open_window() {
    local name=$1
    PLACE[$name]="$2 $3"
    LANG=C.UTF-8 xterm -geometry "${COLS}x${ROWS}+$(($2 * 850))+$(($3 * 570))" \
        -fa "$FONT" -fs "$FONT_SIZE" -bg '#1d1f21' -fg '#e0e0e0' \
        -cr '#e0e0e0' -b 6 +sb -T "$name" -n "$name" \
        -e script -q -f "$TMP/$name.log" \
        -c "bash --rcfile '$TMP/bashrc' -i" 2>>"$TMP/xterm.log" &
    TERM_PID[$name]=$!
}

# find_window NAME: remember the X window id of the xterm titled NAME. Once
# in a while a new X server refuses a connection ("Can't open display");
# an xterm that ended so is started again (twice at most).
find_window() {
    local i id tries=0
    for ((i = 0; i < WAIT_STEPS; i++)); do
        id=$(xdotool search --onlyvisible --name "^$1\$" 2>/dev/null | head -n 1 || true)
        if [[ -n $id ]]; then WID[$1]=$id; return 0; fi
        if ! kill -0 "${TERM_PID[$1]}" 2>/dev/null && ((tries++ < 2)); then
            wait "${TERM_PID[$1]}" 2>/dev/null || true
            say "the $1 window closed at once; opening it again"
            open_window "$1" ${PLACE[$1]}
        fi
        sleep "$WAIT_STEP"
    done
    say "no window titled $1"; return 1
}

# --- Typing and waiting -----------------------------------------------------

# type_line NAME TEXT: type TEXT into the window NAME and press Enter.
type_line() {
    timeout 5 xdotool windowfocus --sync "${WID[$1]}"
    xdotool type --delay 12 -- "$2"
    xdotool key Return
}

# wait_for NAME TEXT [COUNT]: wait until the window NAME has shown TEXT
# (COUNT times at least) since the last forget_shown NAME.
wait_for() {
    local log=$TMP/$1.log text=$2 count=${3:-1} i seen
    for ((i = 0; i < WAIT_STEPS; i++)); do
        seen=$({ tail -c "+$((${FROM[$1]:-0} + 1))" "$log" 2>/dev/null |
                 grep -aoF -- "$text" || true; } | wc -l)
        ((seen >= count)) && return 0
        sleep "$WAIT_STEP"
    done
    say "timed out waiting for '$text' in the $1 window"; return 1
}

# forget_shown NAME: from now on, wait_for looks only at what the window
# NAME shows after this point.
forget_shown() {
    FROM[$1]=$(stat -c %s "$TMP/$1.log" 2>/dev/null || echo 0)
}

# type_keys NAME TEXT: type TEXT into the window NAME, without Enter.
type_keys() {
    timeout 5 xdotool windowfocus --sync "${WID[$1]}"
    xdotool type --delay 12 -- "$2"
}

# press NAME KEY: press KEY (xdotool's name: Tab, Return) in the window NAME.
press() {
    timeout 5 xdotool windowfocus --sync "${WID[$1]}"
    xdotool key "$2"
}

# wait_idle NAME END: wait until the last thing the window NAME shows ends
# with END (a prompt: "$ " for the shell, "> " for the chat client).
wait_idle() {
    local log=$TMP/$1.log end=$2 i tail
    for ((i = 0; i < WAIT_STEPS; i++)); do
        tail=$(tail -c 64 "$log" 2>/dev/null || true)
        tail=${tail//$'\a'/}  # the bell client.py rings after a line
        [[ $tail == *"$end" ]] && return 0
        sleep "$WAIT_STEP"
    done
    say "timed out waiting for the prompt '$end' in the $1 window"; return 1
}

# --- Pictures -----------------------------------------------------------------

# grab NAME LABEL: photograph the window NAME; prints the file name. LABEL
# is kept next to it (FILE.label) for picture().
grab() {
    local file
    file=$(mktemp --suffix=.png "$TMP/shot-$1-XXXXXX")
    import -window "${WID[$1]}" "$file"
    printf '%s' "$2" >"$file.label"
    echo "$file"
}

# picture OUT.png TILE FILE...: put the windows together (TILE is montage's
# -tile, e.g. 2x for two columns), each with its label in a bar above it.
# The empty rows at the bottom of the windows are cut off, the same height
# from each, leaving about one empty row under the lowest text.
picture() {
    local out=$1 tile=$2 file box bottom=0 height full
    shift 2
    for file in "$@"; do
        # The box around what differs from the background: WxH+X+Y.
        box=$(convert "$file" -fuzz 5% -format '%@' info:)
        box=${box#*x}
        height=${box%%+*}
        ((height + ${box##*+} > bottom)) && bottom=$((height + ${box##*+}))
    done
    full=$(identify -format '%h' "$1")  # all windows are the same size
    height=$((bottom + 2 * FONT_SIZE + 12))
    ((height <= full)) || height=$full
    local -a tiles=()
    for file in "$@"; do
        convert "$file" -crop "x$height+0+0" +repage \
            -background '#4a4d52' -gravity north -splice 0x30 \
            -font DejaVu-Sans-Bold -pointsize 16 -fill white \
            -annotate +0+6 "$(cat "$file.label")" "$file.labelled.png"
        tiles+=("$file.labelled.png")
    done
    # Terminal text has few colours: a 256-colour palette (no dithering)
    # looks the same and makes the file 3 times smaller.
    montage "${tiles[@]}" -tile "$tile" -geometry +8+8 -background '#ffffff' \
        miff:- | convert - +dither -colors 256 -strip PNG8:"$TMP/out.png"
    mv "$TMP/out.png" "$OUT/$out"
    say "wrote screenshots/$out"
}

settle() { sleep 0.4; }  # let xterm paint what it has received

# --- The story: pictures 01 to 07 -------------------------------------------

story() {
    open_window server 0 0
    open_window alice 1 0
    open_window bob 2 0
    open_window carol 0 1
    open_window dave 1 1
    open_window erin 2 1
    for name in server alice bob carol dave erin; do
        find_window "$name"
        wait_idle "$name" '$ '
    done

    # 1. The server starts and prints the admin password.
    type_line server "python3 server.py$PORT_ARG"
    wait_for server "listening on 127.0.0.1:$PORT"
    password=$(grep -aoE 'Admin password for this run: [A-Za-z0-9_-]+' \
        "$TMP/server.log" | head -n 1 | sed 's/.*: //')
    [[ -n $password ]] || { say "the server printed no admin password"; exit 1; }
    settle
    picture 01-server-start.png 1x1 "$(grab server 'server: python3 server.py')"

    # 2. alice, bob and carol join; each is shown who is online.
    for who in alice:1 bob:2 carol:3; do
        name=${who%:*}
        type_line "$name" "python3 client.py$PORT_ARG --nick $name"
        wait_for "$name" "Online (${who#*:}):"
        wait_idle "$name" '> '
    done
    wait_for alice "carol joined the chat"
    settle
    picture 02-join-user-list.png 1x \
        "$(grab alice 'alice (joined first)')" \
        "$(grab carol 'carol (joins third)')"

    # 3. dave asks for the nickname alice, which is taken, and is asked again.
    type_line dave "python3 client.py$PORT_ARG"
    wait_for dave "Choose a nickname"
    wait_idle dave 'nickname> '
    type_line dave alice
    wait_for dave "refused"
    wait_for dave "Choose a nickname" 2
    wait_idle dave 'nickname> '
    settle
    picture 03-nick-taken.png 1x1 "$(grab dave 'dave: python3 client.py')"
    type_line dave dave
    wait_for dave "Online (4):"
    wait_idle dave '> '

    # 4. alice chooses bob as her partner; they talk privately; carol sees nothing.
    type_line alice "-to bob"
    wait_for alice "Your lines now go to bob only"
    wait_idle alice '> '
    type_line alice "hi, lunch at noon today?"
    wait_for bob "lunch at noon today?"
    wait_idle bob '> '
    type_line bob "-to alice sure, see you at the usual place"
    wait_for alice "see you at the usual place"
    wait_idle alice '> '
    settle
    picture 04-private.png 1x \
        "$(grab alice 'alice (partner: bob)')" \
        "$(grab bob 'bob')" \
        "$(grab carol 'carol (sees neither private message)')"

    # 5. A broadcast: alice's "-all TEXT" and carol's plain line reach everyone.
    type_line alice "-all the meeting starts in 5 minutes, everyone"
    for name in bob carol dave; do wait_for "$name" "meeting starts in 5 minutes"; done
    wait_idle carol '> '
    type_line carol "thanks alice, on my way"
    for name in alice bob dave; do wait_for "$name" "on my way"; done
    for name in alice bob carol dave; do wait_idle "$name" '> '; done
    settle
    picture 05-broadcast.png 2x \
        "$(grab alice 'alice')" "$(grab bob 'bob')" \
        "$(grab carol 'carol')" "$(grab dave 'dave')"

    # 6. erin joins with plain nc and chats with dave, who uses client.py.
    type_line erin "nc 127.0.0.1 $PORT"
    wait_for erin "Choose a nickname"
    type_line erin erin
    wait_for erin "Online (5):"
    wait_for dave "erin joined the chat"
    type_line erin "hello from plain nc!"
    wait_for dave "hello from plain nc!"
    wait_idle dave '> '
    type_line dave "-to erin welcome! nc works fine here"
    wait_for erin "welcome! nc works fine"
    type_line erin "-to dave thanks, and no install needed"
    wait_for dave "no install needed"
    wait_idle dave '> '
    settle
    picture 06-nc-user.png 1x \
        "$(grab erin "erin: nc 127.0.0.1 $PORT")" \
        "$(grab dave 'dave: python3 client.py')"

    # 7. bob becomes an admin and shuts the server down: every window shows the
    # notice, and each program ends, back at its shell prompt.
    type_line bob "-admin $password"
    wait_for bob "You are now an admin."
    wait_idle bob '> '
    type_line bob "down server"
    for name in alice bob carol dave erin; do
        wait_for "$name" "Server is shutting down"
    done
    # nc does not notice that the server closed the connection until it has
    # something to send: erin ends it with Ctrl+D, as an nc user would.
    for name in server alice bob carol dave; do wait_idle "$name" '$ '; done
    timeout 5 xdotool windowfocus --sync "${WID[erin]}"
    xdotool key ctrl+d
    wait_idle erin '$ '
    settle
    picture 07-down-server.png 2x \
        "$(grab server 'server')" "$(grab bob 'bob (becomes admin)')" \
        "$(grab alice 'alice')" "$(grab carol 'carol')" \
        "$(grab dave 'dave')" "$(grab erin 'erin (nc, ends it with Ctrl+D)')"
}

# --- Picture 08: the newer commands ------------------------------------------

# alice and bob, on a server with a message of the day: bob goes away, alice
# asks who he is and writes to him privately (her line becomes the server's
# copy, "-> bob: ..."), bob changes his nickname, comes back, answers with a
# nickname completed by Tab and waves (-me); alice completes a command and
# a nickname with Tab.
new_commands() {
    local name
    local -A at=([server]="0 0" [alice]="1 0" [bob]="2 0")
    # After the story the windows are there, at the shell prompt: reused,
    # cleared, and what they showed before is forgotten.
    for name in server alice bob; do
        [[ -n ${TERM_PID[$name]:-} ]] || open_window "$name" ${at[$name]}
    done
    for name in server alice bob; do
        [[ -n ${WID[$name]:-} ]] || find_window "$name"
        wait_idle "$name" '$ '
        type_line "$name" clear
        wait_idle "$name" '$ '
        forget_shown "$name"
    done
    printf '%s\n' 'Welcome to the class chat. Be kind.' \
        'Type -help for the commands, -motd to read this again.' \
        >"$TMP/motd.txt"
    type_line server "python3 server.py$PORT_ARG --motd $TMP/motd.txt"
    wait_for server "listening on 127.0.0.1:$PORT"

    type_line alice "python3 client.py$PORT_ARG --nick alice"
    wait_for alice "-motd to read this again"
    wait_idle alice '> '
    type_line bob "python3 client.py$PORT_ARG --nick bob --timestamps"
    wait_for bob "-motd to read this again"
    wait_idle bob '> '
    wait_for alice "bob joined the chat"
    wait_idle alice '> '

    type_line bob "-away lunch"
    wait_for bob "You are marked away (lunch)"
    wait_idle bob '> '
    sleep 2  # so that -whois has a few seconds to tell
    type_line alice "-users"
    wait_for alice "bob (away)"
    wait_idle alice '> '
    type_line alice "-whois bob"
    wait_for alice "away: lunch"
    wait_idle alice '> '
    type_line alice "-to bob are you coming to the 3 pm talk?"
    wait_for alice "bob is away: lunch"
    wait_for bob "are you coming to the 3 pm talk?"
    wait_idle alice '> '
    wait_idle bob '> '

    type_line bob "-nick bobby"
    wait_for alice "bob is now known as bobby"
    wait_idle alice '> '
    wait_idle bob '> '
    type_line bob "-back"
    wait_for bob "You are not marked away any more."
    wait_idle bob '> '
    type_keys bob "-to al"
    press bob Tab
    type_keys bob "yes, see you there"
    press bob Return
    wait_for alice "[private] bobby: yes, see you there"
    wait_for bob "-> alice: yes, see you there"
    wait_idle bob '> '
    type_line bob "-me waves"
    wait_for alice "* bobby waves"
    wait_idle alice '> '
    wait_idle bob '> '

    type_keys alice "-wh"
    press alice Tab
    type_keys alice "BO"
    press alice Tab
    sleep 0.5  # readline rewrites the word with backspaces: nothing to grep
    settle
    picture 08-new-commands.png 2x \
        "$(grab alice 'alice: -wh Tab BO Tab (not sent yet)')" \
        "$(grab bob 'bob (--timestamps)')"
    press alice ctrl+u
    for name in alice bob; do type_line "$name" -exit; done
    for name in alice bob; do wait_idle "$name" '$ '; done
    press server ctrl+c
    wait_idle server '$ '
}

if ((STORY)); then story; fi
if ((NEW_COMMANDS)); then new_commands; fi
say "done"
