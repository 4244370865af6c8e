/* vmlet-disk-wait: the only process of a launcher pod's containerDisk container: keeps the image in use by waiting, and exits 0 at SIGTERM or SIGINT. */
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * Usage: vmlet-disk-wait VOLUME. VOLUME is only there so the node daemon can tell a pod's containers apart
 * by their command lines. No files, no I/O but the usage message: it runs in a `FROM scratch` image, as any
 * uid, on a read-only root. Same wait as vmlet-pause.c, kept separate: that one is the sandbox's PID 1 and
 * takes no argument.
 */

static const char usage[] = "usage: vmlet-disk-wait VOLUME\n"
			    "  waits until SIGTERM or SIGINT, then exits 0; VOLUME is the containerDisk volume's name (a DNS-1123 label)\n";

/* A DNS-1123 label, as Kubernetes requires of volume names: 1-63 of [a-z0-9-], not starting or ending with '-'. */
static int dns_label(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');

		if (!alnum && (c != '-' || i == 0 || i == n - 1))
			return 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	sigset_t all, stop;
	int sig;

	if (argc != 2 || !dns_label(argv[1])) {
		/* nothing else to do when stderr is closed */
		if (write(STDERR_FILENO, usage, sizeof usage - 1) < 0)
			return 2;
		return 2;
	}
	/* Every signal stays blocked, so all but these three are ignored even when we are not PID 1. */
	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, NULL) != 0)
		return 2;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGCHLD);
	for (;;) {
		if (sigwait(&stop, &sig) != 0)
			return 2;
		if (sig != SIGCHLD)
			return 0;
		/* we are PID 1 of the container: orphans of a `kubectl exec` land here */
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}
