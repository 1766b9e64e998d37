#!/bin/sh
# fleet's test op runs this after the switch (hosts/<name>/tests/marker): /etc/fleet-marker
# must say what this commit of the config says.
set -eu
expected=$(cat "$(dirname "$0")/../expected-marker")
actual=$(cat /etc/fleet-marker)
echo "fleet-marker: expected $expected, found $actual"
[ "$actual" = "$expected" ]
