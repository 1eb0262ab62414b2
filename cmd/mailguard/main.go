// Command mailguard protects a mail server by refusing bad mail during the
// SMTP dialogue, as a milter for Postfix and Sendmail.
//
//	mailguard serve [--config FILE]
//	mailguard scan --config FILE PATH...
//	mailguard status [--config FILE] [--url URL] [--json]
//	mailguard check-config --config FILE
//	mailguard sigmine --samples PATH... --clean PATH...
//	mailguard outbreak list|release ID --config FILE
//	mailguard example-config
//	mailguard version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/daemon"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/logging"
	"mailguard/internal/pidfile"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/sigfile"
	"mailguard/internal/sigmine"
	"mailguard/internal/stats"
)

// version is set at build time with -ldflags "-X main.version=...", and
// revision, the source's commit, with "-X main.revision=..." where the
// build records none itself (a build outside a checkout, -buildvcs=false).
var version, revision = "dev", ""

type command struct {
	name, args, summary string
	run                 func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"serve", "[--config FILE] [--allow-root]", "run the milter daemon (built-in defaults without --config)", runServe},
	{"scan", "[--config FILE] PATH...", "run stored messages (files, directories, Maildirs) through the filters", runScan},
	{"status", "[--config FILE] [--url URL]", "what the running daemon is doing: messages, refusals, health (its HTTP listener)", runStatus},
	{"reload", "--config FILE", "make the daemon that config's pid_file names reread its files; say whether it worked", runReload},
	{"check-config", "--config FILE", "check a configuration and the files it names; report every problem", runCheckConfig},
	{"sigmine", "--samples PATH --clean PATH", "mine signatures from worm samples, proven against clean mail", runSigmine},
	{"outbreak", "list|release ID --config FILE", "show the outbreak filter's suspect fingerprints, or let one go", runOutbreak},
	{"example-config", "", "print the complete example configuration (every key, its default)", runExampleConfig},
	{"version", "", "print the version", runVersion},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		return runVersion(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "mailguard: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "mailguard refuses bad mail during the SMTP dialogue, as a milter.")
	fmt.Fprintln(w, "\nUsage:")
	for _, c := range commands {
		fmt.Fprintf(w, "  mailguard %-14s %-28s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun \"mailguard COMMAND --help\" for a command's flags.")
}

func flagSet(name, args, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mailguard %s %s\n\n%s\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; it returns -1 to go on, or the exit code.
func parse(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	return -1
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("serve", "[--config FILE]", "Run the milter daemon. SIGHUP reloads the configuration and\nsignatures; SIGTERM or SIGINT stops accepting and drains sessions.", stderr)
	cfg := fs.String("config", "", "configuration `FILE` (default: built-in defaults)")
	allowRoot := fs.Bool("allow-root", false, "run as root (refused otherwise once a configuration file is given; as allow_root = true)")
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailguard serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := daemon.Run(context.Background(), daemon.Options{ConfigFile: *cfg, Stderr: stderr, AllowRoot: *allowRoot, Version: versionString(), ScaleProcessors: true}); err != nil {
		fmt.Fprintf(stderr, "mailguard serve: %v\n", err)
		return 1
	}
	return 0
}

func runScan(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("scan", "[--config FILE] PATH...", "Run stored messages through the configured filters, offline. One line per\nmessage, then a summary. Exit status: 0 nothing would be rejected,\n1 something would, 2 on error.", stderr)
	cfgFile := fs.String("config", "", "configuration `FILE` (default: built-in defaults)")
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "mailguard scan: name at least one file, directory or Maildir")
		return 2
	}
	cfg := filters.Default()
	if *cfgFile != "" {
		var err error
		if cfg, err = filters.Load(*cfgFile); err != nil {
			fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
			return 2
		}
	}
	// A scan judges stored mail; it must not add it to the mail stream's
	// copy, nor count it as copies arriving (a scan of the outbreak
	// samples would count the worm again), so capture and outbreak stay
	// out.
	cfg.Filters = slices.DeleteFunc(slices.Clone(cfg.Filters), func(f string) bool { return f == "capture" || f == "outbreak" })
	// Decisions are this command's output; the log shows only failures.
	log, _, err := logging.New(config.Log{Target: "stderr", Level: "warn"}, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
		return 2
	}
	counter := stats.NewCounter()
	// Offline: what live daemons share (rate counts in Redis) is left
	// alone; counting filters count in memory of this scan.
	p, err := filters.BuildWith(cfg, pipeline.Env{Log: log, Stats: counter, Now: time.Now}, filters.BuildOptions{Offline: true})
	if err != nil {
		fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
		return 2
	}
	defer p.Close()
	if f, ok := p.Filter("ratelimit").(interface{ Summary() string }); ok {
		fmt.Fprintf(stderr, "mailguard scan: ratelimit: %s\n", f.Summary())
	}
	s := &scan.Scanner{Pipeline: p, Stats: counter, Out: stdout}
	res := s.Run(fs.Args())
	fmt.Fprintf(stdout, "scanned %d messages: %d accepted, %d rejected, %d rejected for some recipients, %d errors\n",
		res.Messages, res.Accepted, res.Rejected, res.PartlyRejected, res.Errors)
	if hits := res.Hits.HitsString(); hits != "" {
		fmt.Fprintf(stdout, "hits: %s\n", hits)
	}
	if res.Messages == 0 && res.Errors == 0 {
		fmt.Fprintf(stderr, "mailguard scan: no message found in %s: give message files or Maildirs (their cur/ and new/ are read)\n", strings.Join(fs.Args(), " "))
	}
	return res.ExitCode()
}

func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("check-config", "--config FILE", "Check a configuration and every file it names (signatures). Prints every\nproblem as FILE:LINE: what is wrong; exit status 1 if there is any.", stderr)
	cfgFile := fs.String("config", "", "configuration `FILE`")
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	if *cfgFile == "" {
		fmt.Fprintln(stderr, "mailguard check-config: --config FILE is required")
		return 2
	}
	// Every problem at once: the file's, then those of the files its good
	// sections name.
	cfg, err := filters.Load(*cfgFile)
	if cfg != nil {
		err = errors.Join(err, filters.Check(cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now}))
		// Where the logs go is checked now, not when serve starts.
		warning, logErr := logging.Check(context.Background(), cfg.Log)
		if logErr != nil {
			err = errors.Join(err, &config.Error{File: *cfgFile, Line: cfg.Line("log.target"), Msg: logErr.Error()})
		}
		if warning != "" {
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s:%d: %s", *cfgFile, cfg.Line("log.remote"), warning))
		}
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, line)
		}
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: OK (filters: %s)\n", *cfgFile, strings.Join(cfg.Filters, ", "))
	return 0
}

// expandPathFlags lets a path flag take several paths, as its usage says:
// "--clean A B --samples C" becomes "--clean A --clean B --samples C".
// What follows a path flag up to the next flag is its paths.
func expandPathFlags(args []string, names ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		out = append(out, a)
		if a == "--" {
			return append(out, args[i+1:]...)
		}
		name := strings.TrimLeft(a, "-")
		if !strings.HasPrefix(a, "-") || strings.Contains(name, "=") || !slices.Contains(names, name) {
			continue
		}
		for first := true; i+1 < len(args) && !strings.HasPrefix(args[i+1], "-"); first = false {
			i++
			if !first {
				out = append(out, a)
			}
			out = append(out, args[i])
		}
	}
	return out
}

// paths is a repeatable flag.
type paths []string

func (p *paths) String() string     { return strings.Join(*p, ",") }
func (p *paths) Set(v string) error { *p = append(*p, v); return nil }

func runSigmine(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("sigmine", "--samples PATH... --clean PATH... [--name NAME]\n       mailguard sigmine --check --signatures FILE --clean PATH... [--samples PATH...]",
		"Mine signatures from copies of one worm, all its variants together (files,\n"+
			"directories, Maildirs such as the capture filter's): lines of the raw body\n"+
			"found in the samples, never in the clean mail, and random enough not to\n"+
			"match by accident. Prints the smallest set found that covers every sample,\n"+
			"each signature in at least --min-samples of them, in the signature-file\n"+
			"format with its evidence, then the samples left uncovered and why. --samples\n"+
			"and --clean take one or more paths each. Exit status 0 when the printed set\n"+
			"matches every sample, 1 when it does not, 2 on error.\n\n"+
			"With --check, proves a signature file instead: clean messages and samples\n"+
			"matched per signature. Exit status 0 when no clean message matched and\n"+
			"every sample did, 1 otherwise.", stderr)
	var samples, clean paths
	fs.Var(&samples, "samples", "worm samples: files, directories or Maildirs (one or more)")
	fs.Var(&clean, "clean", "clean mail: files, directories or Maildirs (one or more)")
	d := sigmine.Defaults
	name := fs.String("name", "MINED", "signature `NAME` prefix (NAME.1, NAME.2, ...)")
	minCoverage := fs.Float64("min-coverage", d.MinCoverage, "fraction of samples each signature must occur in; 0: the smallest set that covers them all")
	minSamples := fs.Int("min-samples", d.MinSamples, "fewest samples one signature may cover, so an odd sample gets none of its own")
	minLength := fs.Int("min-length", d.MinLength, "shortest signature, bytes (at least 16)")
	minEntropy := fs.Float64("min-entropy", d.MinEntropy, "least character entropy, bits per character (random base64: about 5.6; English: about 4.2)")
	maxRun := fs.Int("max-run", d.MaxRun, "longest run of one repeated character")
	window := fs.Int("window", d.Window, "length of substrings that survive re-wrapping of base64 lines; 0 for whole lines only")
	maxSigs := fs.Int("max", d.Max, "signatures to print at most")
	check := fs.Bool("check", false, "prove the signature file given with --signatures")
	noClean := fs.Bool("no-clean", false, "mine without clean mail: the output says it is unproven, and the exit status is 1")
	sigFile := fs.String("signatures", "", "with --check: the signature `FILE`")
	if rc := parse(fs, expandPathFlags(args, "samples", "clean")); rc >= 0 {
		return rc
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailguard sigmine: unexpected argument %q (paths follow --samples or --clean)\n", fs.Arg(0))
		return 2
	}
	var progress io.Writer
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && stderr == os.Stderr {
		progress = stderr
	}
	if *window == 0 {
		*window = -1 // the flag's 0 means off; the library's zero value means the default
	}
	opts := sigmine.Options{Samples: samples, Clean: clean, MinCoverage: *minCoverage, MinSamples: *minSamples, MinLength: *minLength,
		MinEntropy: *minEntropy, MaxRun: *maxRun, Window: *window, Max: *maxSigs, Progress: progress}
	if *check {
		if *sigFile == "" || len(clean) == 0 {
			fmt.Fprintln(stderr, "mailguard sigmine --check: --signatures FILE and --clean PATH are required")
			return 2
		}
		sigs, err := sigfile.Load(*sigFile, config.DefaultMaxFileSize)
		if err != nil {
			fmt.Fprintf(stderr, "mailguard sigmine: %v\n", err)
			return 2
		}
		res, err := sigmine.Check(sigs, opts)
		if err != nil {
			fmt.Fprintf(stderr, "mailguard sigmine: %v\n", err)
			return 2
		}
		res.Write(stdout)
		if !res.OK() {
			return 1
		}
		return 0
	}
	if len(samples) == 0 {
		fmt.Fprintln(stderr, "mailguard sigmine: --samples PATH is required")
		return 2
	}
	if len(clean) == 0 && !*noClean {
		fmt.Fprintln(stderr, "mailguard sigmine: --clean PATH is required: signatures are proven against clean mail (--no-clean prints them unproven)")
		return 2
	}
	res, err := sigmine.Mine(opts)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard sigmine: %v\n", err)
		return 2
	}
	res.Write(stdout, *name)
	for _, err := range res.Errors {
		fmt.Fprintf(stderr, "mailguard sigmine: %v\n", err)
	}
	switch {
	case len(res.Errors) > 0:
		return 2
	case len(res.Uncovered) > 0 || len(res.Signatures) == 0 || len(clean) == 0:
		return 1 // unproven without clean mail: never a success
	}
	return 0
}

func runReload(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("reload", "--config FILE", "Send SIGHUP to the daemon whose pid_file the configuration names, wait for it\nto reread its files, and say whether it worked. Exit status 0 when it did,\n1 when the daemon kept its previous configuration, 2 on error.", stderr)
	cfgFile := fs.String("config", "", "configuration `FILE` (the one the daemon runs)")
	wait := fs.Duration("timeout", 30*time.Second, "how long to wait for the outcome")
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	if *cfgFile == "" {
		fmt.Fprintln(stderr, "mailguard reload: --config FILE is required")
		return 2
	}
	cfg, err := filters.Load(*cfgFile)
	if err != nil {
		// The daemon would refuse it too; say why without signalling.
		fmt.Fprintf(stderr, "%v\nmailguard reload: not reloaded: the configuration has problems\n", err)
		return 1
	}
	if cfg.PidFile == "" {
		fmt.Fprintf(stderr, "mailguard reload: %s sets no pid_file: the daemon cannot be found\n", *cfgFile)
		return 2
	}
	pid, err := pidfile.Read(cfg.PidFile)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard reload: %v (is the daemon running?)\n", err)
		return 2
	}
	before, err := pidfile.ReadStatus(cfg.PidFile)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard reload: %v\n", err)
		return 2
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		fmt.Fprintf(stderr, "mailguard reload: signal process %d: %v\n", pid, err)
		return 2
	}
	for deadline := time.Now().Add(*wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err := pidfile.ReadStatus(cfg.PidFile)
		if err != nil || st.Seq == before.Seq {
			continue
		}
		if st.OK {
			fmt.Fprintf(stdout, "mailguard reload: process %d reloaded %s\n", pid, *cfgFile)
			if pending, ok := strings.CutPrefix(st.Message, "reloaded; "); ok {
				// The filters run the new configuration; these do not yet.
				fmt.Fprintf(stdout, "mailguard reload: %s\n", pending)
			}
			return 0
		}
		fmt.Fprintf(stderr, "mailguard reload: process %d kept its previous configuration: %s\n", pid, st.Message)
		return 1
	}
	fmt.Fprintf(stderr, "mailguard reload: process %d did not report within %s\n", pid, *wait)
	return 2
}

func runExampleConfig(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("example-config", "", "Print the complete example configuration: every key of every filter with its\ndefault and what it does.", stderr)
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	fmt.Fprint(stdout, filters.ExampleConfig())
	return 0
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("version", "", "Print the version.", stderr)
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	fmt.Fprintf(stdout, "mailguard %s\n", versionString())
	return 0
}

// versionString is the version set at build time, else the module's
// version and the VCS revision the build info records (go build in a
// checkout records the commit, its time, and whether the tree was
// modified).
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		info = &debug.BuildInfo{}
	}
	v := version
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["vcs.revision"] == "" && revision != "" {
		settings["vcs.revision"] = revision
	}
	if rev := settings["vcs.revision"]; rev != "" {
		v += " (" + rev[:min(12, len(rev))]
		if t := settings["vcs.time"]; t != "" {
			v += ", " + t
		}
		if settings["vcs.modified"] == "true" {
			v += ", modified"
		}
		v += ")"
	}
	if info.GoVersion == "" {
		return v
	}
	return v + ", " + info.GoVersion
}
