#!/bin/sh
# As the official image's 20-envsubst-on-templates.sh: each /etc/nginx/templates/NAME.template becomes
# /etc/nginx/conf.d/NAME with only the variables the environment defines filled in, so nginx's own ($host ...) stay.
set -e
if [ "$1" = nginx ]; then
  defined=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
  for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    name=$(basename "$template" .template)
    envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$name"
  done
fi
exec "$@"
