package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"mailguard/internal/filter/outbreak"
	"mailguard/internal/filters"
	"mailguard/internal/oneline"
)

func runOutbreak(args []string, stdout, stderr io.Writer) int {
	const use = "list|release ID --config FILE"
	if len(args) == 0 || (args[0] != "list" && args[0] != "release") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintf(stdout, "Usage: mailguard outbreak %s\n", use)
			return 0
		}
		fmt.Fprintf(stderr, "Usage: mailguard outbreak %s\n", use)
		return 2
	}
	op := args[0]
	fs := flagSet("outbreak "+op, "--config FILE", "list: the outbreak filter's suspect fingerprints (held or released), with their\n"+
		"networks, senders, held copies, first and last seen. release ID: let one go; it is\n"+
		"neither held nor suspect again for 7 days. The running daemon answers through its\n"+
		"control socket in the samples folder (backend memory), or Redis does.\n"+
		"Exit status 0 on success, 1 for an unknown id, 2 on error.", stderr)
	cfgFile := fs.String("config", "", "configuration `FILE` (the one the daemon runs)")
	asJSON := fs.Bool("json", false, "list: print JSON")
	if rc := parse(fs, args[1:]); rc >= 0 {
		return rc
	}
	req := outbreak.Request{Op: op}
	switch {
	case op == "release" && fs.NArg() != 1:
		fmt.Fprintln(stderr, "mailguard outbreak release: name one fingerprint id (from list)")
		return 2
	case op == "list" && fs.NArg() != 0:
		fmt.Fprintf(stderr, "mailguard outbreak list: unexpected argument %q\n", fs.Arg(0))
		return 2
	case op == "release":
		req.ID = fs.Arg(0)
		if _, err := outbreak.ParseKey(req.ID); err != nil {
			fmt.Fprintf(stderr, "mailguard outbreak release: %v\n", err)
			return 2
		}
	}
	if *cfgFile == "" {
		fmt.Fprintf(stderr, "mailguard outbreak %s: --config FILE is required\n", op)
		return 2
	}
	cfg, err := filters.Load(*cfgFile)
	if err != nil {
		fmt.Fprintf(stderr, "%v\nmailguard outbreak: the configuration has problems\n", err)
		return 2
	}
	if !slices.Contains(cfg.Filters, outbreak.Name) {
		fmt.Fprintf(stderr, "mailguard outbreak: %s does not run the outbreak filter (filters = %q)\n", *cfgFile, cfg.Filters)
		return 2
	}
	sec := cfg.Sections[outbreak.Name].(*outbreak.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var reply outbreak.Reply
	store, err := outbreak.OpenStore(sec)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "mailguard outbreak: backend %s: %v\n", sec.Backend, err)
		return 2
	case store != nil:
		defer store.Close()
		reply = outbreak.Do(ctx, store, req)
	default:
		socket := outbreak.ControlSocket(sec.Samples)
		if reply, err = outbreak.Ask(ctx, socket, req); err != nil {
			fmt.Fprintf(stderr, "mailguard outbreak: %v (is the daemon running, and are you its user?)\n", err)
			return 2
		}
	}
	if reply.Error != "" {
		fmt.Fprintf(stderr, "mailguard outbreak %s: %s\n", op, reply.Error)
		if op == "release" && !reply.Released {
			return 1
		}
		return 2
	}
	if op == "release" {
		fmt.Fprintf(stdout, "mailguard outbreak: %s released: not held again for 7 days; held copies pass at their next retry\n", req.ID)
		return 0
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(reply.Records)
		return 0
	}
	printRecords(stdout, reply.Records)
	return 0
}

func printRecords(w io.Writer, rs []outbreak.Record) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no suspect fingerprints")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tNETWORKS\tSENDERS\tHELD\tSUSPECT SINCE\tLAST SEEN\tATTACHMENT")
	for _, r := range rs {
		state := "held"
		if r.Released {
			state = "released"
		}
		// The name is the sender's choice: one printable line.
		name := oneline.ASCII(r.Name, 60, '?')
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s (%s, %d bytes)\n", r.ID, state, r.Networks, r.Senders, r.Held,
			r.FirstSeen.Local().Format(time.DateTime), r.LastSeen.Local().Format(time.DateTime), name, r.Kind, r.Size)
	}
	tw.Flush()
}
