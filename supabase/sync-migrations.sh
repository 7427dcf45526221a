#!/bin/sh
# Copy the hub's migrations (hub/migrations/NNNN_name.sql) into the Supabase CLI's layout,
# supabase/migrations/<UTC timestamp>_NNNN_name.sql, byte for byte: a new one gets the time of
# now (later than every copy already there, so the CLI applies them in the hub's order); one
# already copied is refreshed if it differs. tests/unit/hub/test_supabase_migrations.py checks
# the result.
set -eu
cd "$(dirname "$0")/.."
ts=$(date -u +%Y%m%d%H%M%S)
for file in hub/migrations/[0-9]*.sql; do
    name=$(basename "$file")
    copy=$(ls supabase/migrations/ | grep -E "^[0-9]{14}_${name}\$" || true)
    if [ -n "$copy" ]; then
        if ! cmp -s "$file" "supabase/migrations/$copy"; then
            cp "$file" "supabase/migrations/$copy"
            echo "updated supabase/migrations/$copy"
        fi
        continue
    fi
    last=$(ls supabase/migrations/ | sed -n 's/^\([0-9]\{14\}\)_.*\.sql$/\1/p' | sort | tail -n 1)
    if [ -n "$last" ] && [ "$ts" -le "$last" ]; then
        ts=$((last + 1))
    fi
    cp "$file" "supabase/migrations/${ts}_${name}"
    echo "added supabase/migrations/${ts}_${name}"
done
