/*
 * refmilter: the reference for scripts/bench-postfix, a plain libmilter
 * filter doing what mailguard does at its floor: it reads the envelope and
 * the body, looks for one signature line in the body (across chunk
 * boundaries) and refuses the message at its end with 550 5.7.0 when the
 * line is there. It asks the MTA, as mailguard does, for no stage it does
 * not read and for no reply but the last.
 *
 * Build: cc -O2 -o refmilter refmilter.c -lmilter -lpthread
 * Run:   refmilter SOCKET SIGNATURE   (SOCKET as libmilter spells it,
 *        "inet:PORT@127.0.0.1" or "unix:/path")
 */
#define _GNU_SOURCE
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *sig;
static size_t siglen;

struct priv {
	int found;
	unsigned long steps; /* negotiated: which stages get no reply */
	size_t keep;
	char tail[512]; /* the last siglen-1 bytes of the previous chunk */
};

static sfsistat neg(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
		    unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
	unsigned long want = SMFIP_NOHELO | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA |
			     SMFIP_NR_CONN | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_BODY | SMFIP_NR_UNKN | SMFIP_NR_DATA;
	struct priv *p = calloc(1, sizeof *p);
	*pf0 = 0;
	*pf1 = p->steps = f1 & want;
	*pf2 = *pf3 = 0;
	smfi_setpriv(ctx, p);
	return SMFIS_CONTINUE;
}

/* A stage negotiated without a reply must return SMFIS_NOREPLY. */
static sfsistat next(struct priv *p, unsigned long nr)
{
	return p != NULL && (p->steps & nr) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat envfrom(SMFICTX *ctx, char **argv)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p == NULL)
		return SMFIS_CONTINUE;
	p->found = 0;
	p->keep = 0;
	return next(p, SMFIP_NR_MAIL);
}

static sfsistat conncb(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	return next(smfi_getpriv(ctx), SMFIP_NR_CONN);
}

static sfsistat envrcpt(SMFICTX *ctx, char **argv)
{
	return next(smfi_getpriv(ctx), SMFIP_NR_RCPT);
}

static sfsistat body(SMFICTX *ctx, unsigned char *b, size_t n)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p == NULL || p->found)
		return next(p, SMFIP_NR_BODY);
	/* the seam between the chunks */
	if (p->keep > 0) {
		char seam[1024];
		size_t m = n < siglen - 1 ? n : siglen - 1;
		memcpy(seam, p->tail, p->keep);
		memcpy(seam + p->keep, b, m);
		if (memmem(seam, p->keep + m, sig, siglen))
			p->found = 1;
	}
	if (!p->found && memmem(b, n, sig, siglen))
		p->found = 1;
	p->keep = n < siglen - 1 ? n : siglen - 1;
	memcpy(p->tail, b + n - p->keep, p->keep);
	return next(p, SMFIP_NR_BODY);
}

static sfsistat eom(SMFICTX *ctx)
{
	struct priv *p = smfi_getpriv(ctx);
	if (p != NULL && p->found) {
		p->found = 0;
		smfi_setreply(ctx, "550", "5.7.0", "VIRUS FOUND");
		return SMFIS_REJECT;
	}
	return SMFIS_CONTINUE;
}

static sfsistat closecb(SMFICTX *ctx)
{
	free(smfi_getpriv(ctx));
	smfi_setpriv(ctx, NULL);
	return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: refmilter SOCKET SIGNATURE\n");
		return 2;
	}
	sig = argv[2];
	siglen = strlen(sig);
	if (siglen < 2 || siglen > 512) {
		fprintf(stderr, "refmilter: a signature of 2 to 512 bytes\n");
		return 2;
	}
	struct smfiDesc d = {
		.xxfi_name = "refmilter",
		.xxfi_version = SMFI_VERSION,
		.xxfi_flags = 0,
		.xxfi_connect = conncb,
		.xxfi_envfrom = envfrom,
		.xxfi_envrcpt = envrcpt,
		.xxfi_body = body,
		.xxfi_eom = eom,
		.xxfi_close = closecb,
		.xxfi_negotiate = neg,
	};
	if (smfi_setconn(argv[1]) == MI_FAILURE || smfi_register(d) == MI_FAILURE) {
		fprintf(stderr, "refmilter: cannot set up %s\n", argv[1]);
		return 1;
	}
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
