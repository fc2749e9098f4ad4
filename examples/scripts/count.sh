#!/usr/bin/env bash
# Prints 1 to 30, one a second, then "done": a job to watch stream.
for i in $(seq 1 30); do
  echo "$i"
  sleep 1
done
echo done
