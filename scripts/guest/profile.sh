export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export PS1='\u@\h:\w# '
