#!/usr/bin/env bash
# Prints the newest CPython >= 3.12 found (Django 6 needs it), else python3 (Django 5.2 + backport).
set -u
for candidate in python3.14 python3.13 python3.12; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv' 2>/dev/null; then
        command -v "$candidate"; exit 0
    fi
done
for root in "${PYENV_ROOT:-$HOME/.pyenv}/versions"/3.1[2-9]*; do
    [ -x "$root/bin/python3" ] && found="$root/bin/python3"
done
if [ -n "${found:-}" ]; then echo "$found"; exit 0; fi
command -v python3
