// Package attachments is the attachment filter: it walks each message's
// MIME structure as the body streams (mimewalk, on go-message's parser),
// and refuses with "550 5.7.0" a message with an attachment whose hash is
// on a blocklist (threat feeds' SHA-256, SHA-1 or MD5), whose name matches
// a refused pattern (also inside a zip), that has a double extension
// ("invoice.pdf.exe"), or that is a program under a document's name.
package attachments

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"

	"mailguard/internal/hashlist"
	"mailguard/internal/message"
	"mailguard/internal/mimewalk"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "attachments"

// Policy is what a limit hit or malformed MIME means for the message.
type Policy uint8

const (
	PolicyAccept Policy = iota
	PolicyTempFail
	PolicyReject
)

// Options configure the filter.
type Options struct {
	Hashes      *hashlist.List
	HashFiles   int
	BlockNames  []string // lower-case glob patterns
	DoubleExt   bool
	Disguised   bool
	Archives    bool
	Limits      mimewalk.Options
	OnLimit     Policy
	OnMalformed Policy
	// Reply is the text after "550 5.7.0"; %v is the attachment's name.
	Reply string
	Log   *slog.Logger
	Stats *stats.Counter
}

// Filter is immutable; a reload builds a new one.
type Filter struct {
	opts Options
	walk mimewalk.Options
}

// New builds the filter.
func New(opts Options) *Filter {
	if opts.Hashes == nil {
		opts.Hashes = &hashlist.List{}
	}
	if opts.Reply == "" {
		opts.Reply = "Attachment refused: %v"
	}
	w := opts.Limits
	w.SHA256, w.SHA1, w.MD5 = opts.Hashes.Kinds()
	w.Archives = opts.Archives && (len(opts.BlockNames) > 0 || opts.DoubleExt)
	return &Filter{opts: opts, walk: w}
}

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	s := fmt.Sprintf("%d hashes from %d files, %d name patterns", f.opts.Hashes.Len(), f.opts.HashFiles, len(f.opts.BlockNames))
	if f.opts.DoubleExt {
		s += ", double extensions"
	}
	if f.opts.Disguised {
		s += ", disguised executables"
	}
	return s
}

// Stages: the message as delivered; the verdict at its end (or as soon
// as an attachment is refused).
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody | pipeline.StageEndOfMessage, pipeline.StageEndOfMessage
}

func (f *Filter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return &check{f: f}, nil
}

// errAbandoned ends a walk whose message went away.
var errAbandoned = errors.New("message abandoned")

// smallMessage is the size up to which a message is kept and walked at
// its end, on the session's own goroutine. A larger one streams through
// a pipe to a walk of its own, which then costs a goroutine (its stack
// grown anew for the parser) and a hand-over per chunk: for the few
// kilobytes of most mail, more than the walk.
const smallMessage = 16 << 10

type check struct {
	pipeline.NopCheck
	f      *Filter
	header []byte
	// kept is the message so far (the header, then the body) while it
	// is small, from the end of its header on; nil before.
	kept []byte
	pw   *io.PipeWriter
	pr   *io.PipeReader
	done chan struct{}
	// Set by the walk before done closes.
	result    verdict.Verdict
	err       error
	unchecked string // why parts went unchecked, for an accepted message
	archive   string // a zip not listed whole, on_limit accepting it
}

func (c *check) Header(_ context.Context, name, value string) (verdict.Verdict, error) {
	if c.done == nil {
		c.header = message.AppendField(c.header, name, value)
	}
	return verdict.Pass, nil
}

func (c *check) EndOfHeaders(context.Context, *pipeline.Envelope) (verdict.Verdict, error) {
	header := append(c.header, "\r\n"...)
	c.header = nil
	if len(header) <= smallMessage {
		c.kept = header
		return verdict.Pass, nil
	}
	// A large header streams at once: one past the walk's limits is
	// refused here, before its body.
	c.start()
	return c.write(header)
}

func (c *check) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	if c.done != nil {
		return c.write(chunk)
	}
	if c.kept == nil { // the MTA sent no end of the header stage
		c.kept, c.header = c.header, nil
	}
	if len(c.kept)+len(chunk) <= smallMessage {
		c.kept = append(c.kept, chunk...)
		return verdict.Pass, nil
	}
	// Too large to keep: stream it.
	kept := c.kept
	c.kept = nil
	c.start()
	if v, err := c.write(kept); v.Final() || err != nil {
		return v, err
	}
	return c.write(chunk)
}

// start runs the walk over what the pipe carries, in a goroutine of its
// own: the MIME parser pulls, the MTA pushes.
func (c *check) start() {
	if c.done != nil {
		return
	}
	c.pr, c.pw = io.Pipe()
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		c.conclude(mimewalk.Walk(c.pr, c.f.walk, c.part))
		// Nothing more is read: the MTA's next chunks are not waited for.
		c.pr.CloseWithError(errWalkDone)
	}()
	c.header = nil
}

// conclude sets the check's outcome from the walk's end.
func (c *check) conclude(err error) {
	c.result, c.unchecked, c.err = c.f.outcome(err)
	if c.archive != "" && c.err == nil && !c.result.Final() && c.unchecked == "" {
		c.result, c.unchecked, c.err = c.f.policy(PolicyAccept, "limit", c.archive, "")
	}
}

var errWalkDone = errors.New("walk done")

// write hands the walk a chunk and returns once it has read all of it
// (the chunk is valid only during the call), or the walk has ended.
func (c *check) write(b []byte) (verdict.Verdict, error) {
	if _, err := c.pw.Write(b); err != nil {
		return c.finished()
	}
	select {
	case <-c.done:
		return c.finished()
	default:
		return verdict.Pass, nil
	}
}

func (c *check) finished() (verdict.Verdict, error) {
	<-c.done
	return c.result, c.err
}

func (c *check) EndOfMessage(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if c.done == nil { // a small message: walked here, whole
		if c.kept == nil { // no end of the header stage, no body
			c.kept = append(c.header, "\r\n"...)
		}
		c.conclude(mimewalk.Walk(bytes.NewReader(c.kept), c.f.walk, c.part))
		c.kept = nil
		return c.concluded(env)
	}
	c.pw.Close()
	select {
	case <-c.done:
		return c.concluded(env)
	case <-ctx.Done():
		c.pr.CloseWithError(ctx.Err())
		<-c.done
		return verdict.Pass, ctx.Err()
	}
}

// concluded is the check's outcome, once the walk is over.
func (c *check) concluded(env *pipeline.Envelope) (verdict.Verdict, error) {
	if c.unchecked != "" {
		c.f.opts.Log.Info("attachments: message accepted with parts unchecked", "reason", c.unchecked,
			"queue_id", env.QueueID, "from", pipeline.LogField(env.From))
	}
	return c.result, c.err
}

func (c *check) Close() {
	if c.done != nil {
		c.pr.CloseWithError(errAbandoned)
		c.pw.CloseWithError(errAbandoned)
		<-c.done
	}
}

// errRefused carries a part's refusal out of the walk.
type errRefused struct{ v verdict.Verdict }

func (e *errRefused) Error() string { return e.v.Reason }

// errArchive ends a walk at a zip that could not be listed whole, when
// on_limit does not accept that.
type errArchive struct{ reason string }

func (e *errArchive) Error() string { return e.reason }

// part judges one leaf of the message.
func (c *check) part(p *mimewalk.Part) error {
	if v, ok := c.f.judge(p); ok {
		return &errRefused{v}
	}
	if p.ArchiveErr != "" {
		// Names it could not read may be the refused ones.
		reason := fmt.Sprintf("archive %q not listed whole: %s", p.Name, p.ArchiveErr)
		if c.f.opts.OnLimit != PolicyAccept {
			return &errArchive{reason}
		}
		if c.archive == "" {
			c.archive = reason // the walk goes on; said at its end
		}
	}
	return nil
}

func (f *Filter) refuse(name, key, reason string) verdict.Verdict {
	if name == "" {
		name = "(unnamed)"
	}
	v := verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhSecurity, "%s", strings.ReplaceAll(f.opts.Reply, "%v", replySafe(name)))
	v.Reason, v.Key = reason, key
	return v
}

// judge applies the rules to one part, and to each name it carries.
func (f *Filter) judge(p *mimewalk.Part) (verdict.Verdict, bool) {
	if e, ok := f.opts.Hashes.Lookup(&p.Sums); ok {
		what := e.Name
		if what == "" {
			what = "listed"
		}
		return f.refuse(p.Name, "blocked hash", fmt.Sprintf("attachment %q (%d bytes) has a blocked hash: %s (%s)", p.Name, p.Sums.Size, what, e.Source())), true
	}
	for _, name := range p.Names {
		if why := f.badName(name); why != "" {
			return f.refuse(name, why, fmt.Sprintf("attachment %q: %s", name, why)), true
		}
	}
	for _, inner := range p.ArchiveNames {
		if why := f.badName(path.Base(inner)); why != "" {
			return f.refuse(p.Name, why+" in an archive", fmt.Sprintf("%q inside archive %q: %s", inner, p.Name, why)), true
		}
	}
	if f.opts.Disguised && mimewalk.Executable(p.Kind) && disguised(p) {
		return f.refuse(p.Name, "disguised executable", fmt.Sprintf("attachment %q declared %s is a program (%s)", p.Name, p.Type, p.Kind)), true
	}
	return verdict.Verdict{}, false
}

// badName says why a file name is refused, or "". A name with a NUL in
// it is checked as a client may show it (up to the NUL) and whole.
func (f *Filter) badName(name string) string {
	if i := strings.IndexByte(name, 0); i >= 0 {
		if why := f.badName(name[:i]); why != "" {
			return why
		}
	}
	n := normalName(name)
	for _, pat := range f.opts.BlockNames {
		if ok, _ := path.Match(pat, n); ok {
			return "name matches " + pat
		}
	}
	if f.opts.DoubleExt && doubleExtension(n) {
		return "double extension"
	}
	return ""
}

// normalName is a name as Windows would open it: lower case, without the
// trailing dots and blanks it ignores.
func normalName(name string) string {
	return strings.TrimRight(strings.ToLower(name), ". \t")
}

// docExts are extensions of documents and media a sender might show
// before a program's extension; execExts the programs' (and scripts').
var (
	docExts = set("pdf doc docx docm xls xlsx xlsm ppt pptx rtf txt csv odt ods jpg jpeg png gif bmp tif tiff mp3 mp4 wav avi mov htm html zip rar 7z")
	// execExts also matter for disguise: a program named so is not disguised.
	execExts = set("exe com scr pif bat cmd cpl msi msp dll vbs vbe js jse wsf wsh hta lnk jar ps1 psm1 reg sys app iso img")
)

func set(words string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(words) {
		m[w] = true
	}
	return m
}

// doubleExtension: "invoice.pdf.exe", a document's extension then a
// program's, blanks between them or not.
func doubleExtension(n string) bool {
	outer := path.Ext(n)
	if outer == "" {
		return false
	}
	inner := path.Ext(strings.TrimRight(strings.TrimSuffix(n, outer), " \t"))
	return inner != "" && docExts[inner[1:]] && execExts[outer[1:]]
}

// disguised: a program whose name (any of them) or declared type says it
// is not one.
func disguised(p *mimewalk.Part) bool {
	named := false
	for _, name := range p.Names {
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if ext := path.Ext(normalName(name)); ext != "" {
			named = true
			if !execExts[ext[1:]] {
				return true
			}
		}
	}
	if named {
		return false
	}
	switch {
	case strings.HasPrefix(p.Type, "text/"), strings.HasPrefix(p.Type, "image/"), strings.HasPrefix(p.Type, "audio/"), strings.HasPrefix(p.Type, "video/"):
		return true
	case p.Type == "application/pdf", strings.HasPrefix(p.Type, "application/msword"), strings.HasPrefix(p.Type, "application/vnd."):
		return true
	}
	return false
}

// outcome turns the walk's end into the message's verdict, and says why
// parts went unchecked when a policy accepts it anyway.
func (f *Filter) outcome(err error) (verdict.Verdict, string, error) {
	var (
		refused *errRefused
		limit   *mimewalk.LimitError
		archive *errArchive
		bad     *mimewalk.MalformedError
	)
	switch {
	case err == nil:
		return verdict.Pass, "", nil
	case errors.As(err, &refused):
		return refused.v, "", nil
	case errors.As(err, &limit):
		return f.policy(f.opts.OnLimit, "limit", limit.Error(), "Message structure too complex to check")
	case errors.As(err, &archive):
		return f.policy(f.opts.OnLimit, "limit", archive.reason, "Message structure too complex to check")
	case errors.As(err, &bad):
		return f.policy(f.opts.OnMalformed, "malformed MIME", bad.Error(), "Malformed MIME structure")
	case errors.Is(err, errAbandoned):
		return verdict.Pass, "", nil
	}
	return verdict.Pass, "", err
}

func (f *Filter) policy(p Policy, key, reason, text string) (verdict.Verdict, string, error) {
	var v verdict.Verdict
	switch p {
	case PolicyReject:
		v = verdict.Rejectf(verdict.CodeTransactionFailed, verdict.EnhMediaError, "%s", text)
	case PolicyTempFail:
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSystemTemp, "%s, try again later", text)
	default:
		if f.opts.Stats != nil {
			f.opts.Stats.Hit(Name, "not checked: "+key)
		}
		return verdict.Pass, reason, nil
	}
	v.Reason, v.Key = reason, key
	return v, "", nil
}

// replySafe keeps a sender-chosen name fit for an SMTP reply line.
func replySafe(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '%' {
			return '?'
		}
		return r
	}, s)
}
