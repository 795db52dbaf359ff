/*
 * The pause process of bosun's test pod sandboxes: it holds the sandbox's namespaces open,
 * reaps every child that is reparented to it, and exits 0 on SIGTERM or SIGINT.
 * Built with `gcc -Os -static` when the test image is built; it needs nothing at run time.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_terminate(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	/* One SIGCHLD may stand for several exited children. */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static int handle(int sig, void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	return sigaction(sig, &sa, NULL);
}

int main(void)
{
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not running as PID 1\n");

	if (handle(SIGTERM, on_terminate) < 0 || handle(SIGINT, on_terminate) < 0 ||
	    handle(SIGCHLD, on_child) < 0) {
		perror("pause: sigaction");
		return 1;
	}

	for (;;)
		pause();
}
