#!/bin/sh
# The README's CLI tour, against a running server: run it from the directory
# the server serves (its root dir; `functionai serve` serves the directory it
# was started in), with the line `functionai serve` printed:
#
#   export FUNCTIONAI_URL=... FUNCTIONAI_TOKEN=...
#   sh examples/cli_tour.sh
#
# FUNCTIONAI (default: functionai) is the command to run.
set -eu
fai=${FUNCTIONAI:-functionai}

# functions, sessions, cold starts, logs, keys
$fai deploy examples/my_agent.py --memory 256Mi --timeout 30 --min-instances 2
$fai invoke my_agent --session agent-bob --data '{"q": "hi"}' --verbose
$fai sessions my_agent
$fai coldstarts my_agent
$fai logs my_agent
$fai keys create my_agent                                        # fai_... for one function

# a durable task
$fai deploy examples/crunch.py
task=$($fai submit crunch --data '{"n": 100}' --timeout 7200 --retries 3)   # prints t-...
$fai tasks wait "$task"
$fai tasks ls crunch --state succeeded

# a notebook run (its path is relative to the server's root dir)
$fai run examples/reports/daily.ipynb -p day 2026-11-25 -p limit 10 --html --tag daily --wait
$fai runs ls --tag daily
