#!/bin/sh
# udhcpc event handler: applies a DHCP lease (address, router, DNS, MTU, hostname) to $interface.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    if [ "$1" = bound ] || ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    fi
    if [ -n "$router" ]; then
      while ip route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    {
      [ -n "$domain" ] && echo "search $domain"
      for d in $dns; do echo "nameserver $d"; done
    } > /etc/resolv.conf
    [ -n "$hostname" ] && hostname "$hostname"
    [ "$1" = bound ] && echo "vmlet-guest: $interface $ip/${mask:-24} router ${router:-none} (dhcp)" > /dev/console
    ;;
  leasefail|nak)
    ;;
esac
exit 0
