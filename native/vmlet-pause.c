/* vmlet-pause: the pod sandbox's PID 1 for the test cluster's pause image: waits for SIGINT or SIGTERM and reaps children meanwhile. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		return 2;
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			return 2;
		if (sig != SIGCHLD)
			return 0;
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}
