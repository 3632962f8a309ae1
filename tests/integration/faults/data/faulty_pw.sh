#!/bin/bash
# Real pw.x with a fault on chosen calls: the QE failure modes of the fault suite.
# $NNMD_TEST_PW_PLAN names a file with one mode per line, for the 1st, 2nd, ... call
# (calls past its end are "ok"):
#   ok         run pw.x as it is
#   notconv    pw.x with electron_maxstep = 1: the SCF does not converge (exit code 2)
#   crash      no pw.x: die as a crashed program does (exit 134, a message on stderr)
#   timeout    hang (sleep) until the backend's timeout kills the run
#   badpseudo  pw.x told to read a pseudopotential file that is not there: pw.x stops
#              with its own error (read_pseudo / readpp)
set -u
plan=${NNMD_TEST_PW_PLAN:?}
n=$(( $(cat "$plan.count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$plan.count"
mode=$(sed -n "${n}p" "$plan")
mode=${mode:-ok}
echo "$n $mode" >> "$plan.log"
case "$mode" in
  notconv)
    sed -i -e '/^ *electron_maxstep/Id' -e 's/^&ELECTRONS.*/&\n  electron_maxstep = 1/I' pw.in ;;
  crash)
    echo "faulty_pw: simulated crash (SIGABRT)" >&2
    exit 134 ;;
  timeout)
    exec sleep 600 ;;
  badpseudo)
    sed -i -E 's/([A-Za-z0-9_.-]+)\.(UPF|upf)/\1.missing.\2/' pw.in ;;
esac
exec /usr/bin/pw.x "$@"
