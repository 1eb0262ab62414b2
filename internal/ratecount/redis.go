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

// takeScript: KEYS current and previous window; ARGV n, limit, the
// previous window's weight, the current key's lifetime in ms.
var takeScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = cur + math.floor(prev * tonumber(ARGV[3]))
local n = tonumber(ARGV[1])
if count + n > tonumber(ARGV[2]) then
  return {0, count}
end
if n > 0 then
  redis.call('INCRBY', KEYS[1], n)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {1, count}
`)

func (r *Redis) keys(key string, window time.Duration) ([]string, float64) {
	index, weight := slot(r.now(), window)
	return []string{windowKey(r.prefix, key, index), windowKey(r.prefix, key, index-1)}, weight
}

func (r *Redis) Take(ctx context.Context, key string, n, limit int64, window time.Duration) (bool, int64, error) {
	keys, weight := r.keys(key, window)
	res, err := takeScript.Run(ctx, r.client, keys, n, limit, strconv.FormatFloat(weight, 'f', 6, 64), (2 * window).Milliseconds()).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return res[0] == 1, res[1], nil
}

func (r *Redis) Add(ctx context.Context, key string, n int64, window time.Duration) error {
	keys, _ := r.keys(key, window)
	pipe := r.client.TxPipeline()
	pipe.IncrBy(ctx, keys[0], n)
	pipe.PExpire(ctx, keys[0], 2*window)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return nil
}

var acquireScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
`)

var releaseScript = redis.NewScript(`
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
`)

func (r *Redis) Acquire(ctx context.Context, key string, limit int64) (bool, error) {
	ok, err := acquireScript.Run(ctx, r.client, []string{r.prefix + "conc:" + key}, limit, holderTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return ok == 1, nil
}

func (r *Redis) Release(ctx context.Context, key string) error {
	if err := releaseScript.Run(ctx, r.client, []string{r.prefix + "conc:" + key}).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return nil
}
