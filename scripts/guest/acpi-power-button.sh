#!/bin/sh
# ACPI power button: orderly power-off through PID 1
exec poweroff
