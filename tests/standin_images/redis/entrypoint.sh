#!/bin/sh
# As the official image's entrypoint: redis-server runs as `redis`, owning /data; protected mode is off unless
# the command line says otherwise (the official binary is built with it off).
set -e
if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
  if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
