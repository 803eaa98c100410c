#!/bin/sh
# As the official image's entrypoint: a first argument that is an option (`-` for configuration on standard input
# among them) or a .conf file is for redis-server; redis-server runs as `redis`, owning /data, with its standard
# input (docker-compose.yml's `redis-server - ... <<EOF` gives the password there) handed on by exec; protected
# mode is off unless the command line says otherwise (the official binary is built with it off).
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
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
