package ratecount

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis counts in a Redis server that several mailguard hosts share.
// Every update is one atomic script, and every key expires: a rate's
// when its window is over, a holder count's when no holder renews it.
//
// A holder count is a sorted set per key: one member per holding
// session, scored with the moment (Redis's own clock, the same for every
// host) its lease ends. Takes drop the members whose lease has ended
// before counting, and this host renews the leases of its open sessions
// every third of a lease, all in one round trip. So whatever Redis did
// meanwhile (a release that timed out, a take that ran after its caller
// gave up, a host that died), a count ends within HolderLease of its
// session; a session open through a stall longer than a lease may lose
// its count early, which errs toward letting clients in.
type Redis struct {
	client *redis.Client
	prefix string
	now    func() time.Time
	lease  time.Duration

	mu      sync.Mutex
	leases  map[heldCount]struct{} // this host's open holder counts
	renewer bool                   // a renewing goroutine runs
	closed  chan struct{}
	close   sync.Once
}

// heldCount is one session's holder count of one key.
type heldCount struct{ key, holder string }

// HolderLease is how long a holder count lives unless renewed: how long a
// client may stay locked out after a release was lost.
const HolderLease = 10 * time.Second

func init() {
	// go-redis prints its pool's troubles itself; the filter reports
	// failures through on_error, in the daemon's own log format.
	redis.SetLogger(silent{})
}

type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}

// NewRedis connects (lazily: go-redis dials on first use and reconnects
// by itself) to a redis:// URL. Short timeouts: mail must not wait on an
// unreachable Redis; on_error decides.
func NewRedis(url string, now func() time.Time) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = time.Second
	opts.ReadTimeout = 500 * time.Millisecond
	opts.WriteTimeout = 500 * time.Millisecond
	opts.MaxRetries = 0
	opts.DialerRetries = 1
	opts.PoolSize = 32
	opts.ContextTimeoutEnabled = true
	if now == nil {
		now = time.Now
	}
	return &Redis{
		client: redis.NewClient(opts), prefix: "mailguard:rl:", now: now, lease: HolderLease,
		leases: map[heldCount]struct{}{}, closed: make(chan struct{}),
	}, nil
}

// Addr is the Redis server's address.
func (r *Redis) Addr() string { return r.client.Options().Addr }

// Ping checks that Redis answers.
func (r *Redis) Ping(ctx context.Context) error { return r.client.Ping(ctx).Err() }

// Close stops renewing leases and closes the connection pool.
func (r *Redis) Close() error {
	r.close.Do(func() { close(r.closed) })
	return r.client.Close()
}

// takeScript checks every op, then counts them all, or none. KEYS: two
// per op, the current and previous window (a holder count uses the
// first). ARGV: five per op: n, limit, the previous window's weight (-1
// for a holder count), the current key's lifetime (a holder's lease) in
// ms, the holder.
var takeScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ops = #KEYS / 2
for i = 1, ops do
  local a = (i - 1) * 5
  local n, limit, w = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local count
  if w >= 0 then
    count = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    count = count + math.floor(tonumber(redis.call('GET', KEYS[2 * i]) or '0') * w)
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * i - 1], '-inf', now)
    count = redis.call('ZCARD', KEYS[2 * i - 1])
    if redis.call('ZSCORE', KEYS[2 * i - 1], ARGV[a + 5]) then
      count = count - 1
    end
  end
  if count + n > limit then
    return {i - 1, count}
  end
end
for i = 1, ops do
  local a = (i - 1) * 5
  local n, w, life = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if n > 0 then
    if w >= 0 then
      redis.call('INCRBY', KEYS[2 * i - 1], n)
    else
      redis.call('ZADD', KEYS[2 * i - 1], now + life, ARGV[a + 5])
    end
    redis.call('PEXPIRE', KEYS[2 * i - 1], life)
  end
end
return {-1, 0}
`)

func (r *Redis) holderKey(key string) string { return r.prefix + "conc:" + key }

func (r *Redis) Take(ctx context.Context, ops []Op) (int, int64, error) {
	keys := make([]string, 0, 2*len(ops))
	args := make([]any, 0, 5*len(ops))
	now := r.now()
	for _, op := range ops {
		if op.Window == 0 {
			if op.Holder == "" {
				return -1, 0, ErrNoHolder
			}
			k := r.holderKey(op.Key)
			keys = append(keys, k, k)
			args = append(args, op.N, op.Limit, -1, r.lease.Milliseconds(), op.Holder)
			continue
		}
		index, weight := slot(now, op.Window)
		keys = append(keys, windowKey(r.prefix, op.Key, index), windowKey(r.prefix, op.Key, index-1))
		args = append(args, op.N, op.Limit, strconv.FormatFloat(weight, 'f', 6, 64), (2 * op.Window).Milliseconds(), "")
	}
	res, err := takeScript.Run(ctx, r.client, keys, args...).Int64Slice()
	if err != nil {
		return -1, 0, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	// The script answers {over, count}; anything else (another server on
	// the port, a proxy's mistake) is an error, not an index to trust.
	if len(res) != 2 || res[0] < -1 || res[0] >= int64(len(ops)) || res[1] < 0 {
		return -1, 0, fmt.Errorf("redis %s: unexpected answer %v to %d counts", r.Addr(), res, len(ops))
	}
	if res[0] < 0 {
		for _, op := range ops {
			if op.Window == 0 && op.N > 0 {
				r.hold(heldCount{op.Key, op.Holder})
			}
		}
	}
	return int(res[0]), res[1], nil
}

// hold renews a holder count's lease from now until it is released,
// starting the renewer if it is not running.
func (r *Redis) hold(h heldCount) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leases[h] = struct{}{}
	if !r.renewer {
		r.renewer = true
		go r.renew()
	}
}

// renewScript renews this host's leases. KEYS: the holder counts; ARGV:
// the lease in ms, then each key's holder. A lease already released (or
// expired) is not brought back.
var renewScript = redis.NewScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[1])
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], now + life, ARGV[i + 1])
    redis.call('PEXPIRE', KEYS[i], life)
  end
end
return 0
`)

// renewBatch bounds one renewal's size.
const renewBatch = 512

// renew runs while this host holds counts: every third of a lease, one
// round trip (per renewBatch counts) renews them all. A renewal that
// fails is tried again at the next tick; a lease runs out only after
// three in a row fail.
func (r *Redis) renew() {
	every := r.lease / 3
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-r.closed:
			return
		case <-tick.C:
		}
		r.mu.Lock()
		if len(r.leases) == 0 {
			r.renewer = false
			r.mu.Unlock()
			return
		}
		held := make([]heldCount, 0, len(r.leases))
		for h := range r.leases {
			held = append(held, h)
		}
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), every)
		for len(held) > 0 {
			batch := held[:min(len(held), renewBatch)]
			held = held[len(batch):]
			keys := make([]string, len(batch))
			args := make([]any, 1, 1+len(batch))
			args[0] = r.lease.Milliseconds()
			for i, h := range batch {
				keys[i] = r.holderKey(h.key)
				args = append(args, h.holder)
			}
			if renewScript.Run(ctx, r.client, keys, args...).Err() != nil {
				break
			}
		}
		cancel()
	}
}

func (r *Redis) Add(ctx context.Context, key string, n int64, window time.Duration) error {
	index, _ := slot(r.now(), window)
	k := windowKey(r.prefix, key, index)
	pipe := r.client.TxPipeline()
	pipe.IncrBy(ctx, k, n)
	pipe.PExpire(ctx, k, 2*window)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return nil
}

// Release removes the holder, and stops renewing its lease first: if
// Redis does not answer, the count ends with the lease.
func (r *Redis) Release(ctx context.Context, key, holder string) error {
	r.mu.Lock()
	delete(r.leases, heldCount{key, holder})
	r.mu.Unlock()
	if err := r.client.ZRem(ctx, r.holderKey(key), holder).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return nil
}
