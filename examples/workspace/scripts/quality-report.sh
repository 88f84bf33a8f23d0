#!/bin/sh
# Counts the data rows of a dataset's CSV file and reports them as the run's output.
# Usage: quality-report.sh DATASET_NAME
# A job's reported outputs are the JSON object on the last line of its stdout.
set -eu
name="${1:-}"
case "$name" in
    '' | .* | */* | *..*)
        echo "quality-report: invalid dataset name '$name'" >&2
        exit 2 ;;
esac
file=".dwflow/datasets/$name.csv"
[ -f "$file" ] || file="datasets/$name.csv"
if [ ! -f "$file" ]; then
    echo "quality-report: no CSV file for dataset '$name'" >&2
    exit 3
fi
lines=$(wc -l < "$file")
rows=$((lines - 1))
empty=$(grep -c -e ',,' -e ',$' "$file" || true)
echo "dataset $name: $rows rows, $empty with an empty field"
printf '{"rows": %d, "rows_with_empty_fields": %d, "file": "%s"}\n' "$rows" "$empty" "$file"
