package ratecount

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis counts in a Redis server that several mailguard hosts share.
// Every update is one atomic script, and every key expires when its
// window is over.
type Redis struct {
	client *redis.Client
	prefix string
	now    func() time.Time
}

func init() {
	// go-redis prints its pool's troubles itself; the filter reports
	// failures through on_error, in the daemon's own log format.
	redis.SetLogger(silent{})
}

type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}

// holderTTL bounds how long a concurrency count outlives the last
// update: a host that died holding connections leaves no count for ever.
const holderTTL = time.Hour

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
	return &Redis{client: redis.NewClient(opts), prefix: "mailguard:rl:", now: now}, nil
}

// Addr is the Redis server's address.
func (r *Redis) Addr() string { return r.client.Options().Addr }

// Ping checks that Redis answers.
func (r *Redis) Ping(ctx context.Context) error { return r.client.Ping(ctx).Err() }

// Close closes the connection pool.
func (r *Redis) Close() error { return r.client.Close() }

// takeScript checks every op, then counts them all, or none. KEYS: two
// per op, the current and previous window (a holder count uses the
// first). ARGV: four per op: n, limit, the previous window's weight (-1
// for a holder count), the current key's lifetime in ms.
var takeScript = redis.NewScript(`
local ops = #KEYS / 2
for i = 1, ops do
  local a = (i - 1) * 4
  local n, limit, w = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local count = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  if w >= 0 then
    count = count + math.floor(tonumber(redis.call('GET', KEYS[2 * i]) or '0') * w)
  end
  if count + n > limit then
    return {i - 1, count}
  end
end
for i = 1, ops do
  local a = (i - 1) * 4
  local n = tonumber(ARGV[a + 1])
  if n > 0 then
    redis.call('INCRBY', KEYS[2 * i - 1], n)
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[a + 4])
  end
end
return {-1, 0}
`)

func (r *Redis) Take(ctx context.Context, ops []Op) (int, int64, error) {
	keys := make([]string, 0, 2*len(ops))
	args := make([]any, 0, 4*len(ops))
	now := r.now()
	for _, op := range ops {
		if op.Window == 0 {
			k := r.prefix + "conc:" + op.Key
			keys = append(keys, k, k)
			args = append(args, op.N, op.Limit, -1, holderTTL.Milliseconds())
			continue
		}
		index, weight := slot(now, op.Window)
		keys = append(keys, windowKey(r.prefix, op.Key, index), windowKey(r.prefix, op.Key, index-1))
		args = append(args, op.N, op.Limit, strconv.FormatFloat(weight, 'f', 6, 64), (2 * op.Window).Milliseconds())
	}
	res, err := takeScript.Run(ctx, r.client, keys, args...).Int64Slice()
	if err != nil {
		return -1, 0, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return int(res[0]), res[1], nil
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

var releaseScript = redis.NewScript(`
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
`)

func (r *Redis) Release(ctx context.Context, key string) error {
	if err := releaseScript.Run(ctx, r.client, []string{r.prefix + "conc:" + key}).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return nil
}
