// Command mailguard protects a mail server by refusing bad mail during the
// SMTP dialogue, as a milter for Postfix and Sendmail.
//
//	mailguard serve [--config FILE]
//	mailguard scan --config FILE PATH...
//	mailguard check-config --config FILE
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
	"strings"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/daemon"
	"mailguard/internal/filters"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/stats"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name, args, summary string
	run                 func(args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"serve", "[--config FILE]", "run the milter daemon (built-in defaults without --config)", runServe},
	{"scan", "[--config FILE] PATH...", "run stored messages (files, directories, Maildirs) through the filters", runScan},
	{"check-config", "--config FILE", "check a configuration and the files it names; report every problem", runCheckConfig},
	{"version", "", "print the version", runVersion},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
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
		fmt.Fprintf(w, "  mailguard %-13s %-24s %s\n", c.name, c.args, c.summary)
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
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mailguard serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := daemon.Run(context.Background(), daemon.Options{ConfigFile: *cfg, Stderr: stderr}); err != nil {
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
	cfg := config.Default()
	if *cfgFile != "" {
		var err error
		if cfg, err = config.Load(*cfgFile); err != nil {
			fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
			return 2
		}
	}
	// Decisions are this command's output; the log shows only failures.
	log, _, err := logging.New(config.Log{Target: "stderr", Level: "warn"}, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
		return 2
	}
	counter := stats.NewCounter()
	p, err := filters.Build(cfg, pipeline.Env{Log: log, Stats: counter, Now: time.Now})
	if err != nil {
		fmt.Fprintf(stderr, "mailguard scan: %v\n", err)
		return 2
	}
	s := &scan.Scanner{Pipeline: p, Stats: counter, Out: stdout}
	res := s.Run(fs.Args())
	fmt.Fprintf(stdout, "scanned %d messages: %d accepted, %d rejected, %d errors\n", res.Messages, res.Accepted, res.Rejected, res.Errors)
	if hits := res.Hits.HitsString(); hits != "" {
		fmt.Fprintf(stdout, "hits: %s\n", hits)
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
	cfg, err := config.Load(*cfgFile)
	if err == nil {
		_, err = filters.Build(cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now})
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, line)
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK (filters: %s)\n", *cfgFile, strings.Join(cfg.Filters, ", "))
	return 0
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("version", "", "Print the version.", stderr)
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	v := version
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	fmt.Fprintf(stdout, "mailguard %s\n", v)
	return 0
}
