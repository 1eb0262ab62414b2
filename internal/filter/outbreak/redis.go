package outbreak

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the store every MX host shares. Each key's networks and
// senders are HyperLogLogs (PFADD, PFCOUNT: some 12 KB at most, a few
// dozen bytes while small), one per part of the window, each expiring
// when its part leaves the window; PFCOUNT over the parts is the
// window's distinct count. One script per message counts every key and
// sets the holds, so two hosts cannot both let the copy past the
// threshold through.
type Redis struct {
	client *redis.Client
	set    Settings
	prefix string
	now    func() time.Time
}

// NewRedis connects (lazily) to a redis:// URL, with short timeouts: mail
// must not wait on an unreachable Redis; on_error decides.
func NewRedis(url string, set Settings, now func() time.Time) (*Redis, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opts.DialTimeout = time.Second
	opts.ReadTimeout = time.Second
	opts.WriteTimeout = time.Second
	opts.MaxRetries = 0
	opts.PoolSize = 32
	opts.ContextTimeoutEnabled = true
	if now == nil {
		now = time.Now
	}
	return &Redis{client: redis.NewClient(opts), set: set, prefix: "mailguard:ob:", now: now}, nil
}

// Addr is the Redis server's address.
func (r *Redis) Addr() string { return r.client.Options().Addr }

// Ping checks that Redis answers.
func (r *Redis) Ping(ctx context.Context) error { return r.client.Ping(ctx).Err() }

func (r *Redis) Close() error { return r.client.Close() }

// observeScript: KEYS, per fingerprint key, slotsPerWindow+1 network
// HLLs (the current part first), as many sender HLLs, the hold key and
// the release key. ARGV: network, sender, the lifetime of a part's HLL
// in ms, the number of fingerprint keys, the parts per key. Returns per
// key: networks, senders, held, released.
var observeScript = redis.NewScript(`
local slots = tonumber(ARGV[5])
local per = 2 * slots + 2
local out = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local b = i * per
  redis.call('PFADD', KEYS[b + 1], ARGV[1])
  redis.call('PEXPIRE', KEYS[b + 1], ARGV[3])
  redis.call('PFADD', KEYS[b + slots + 1], ARGV[2])
  redis.call('PEXPIRE', KEYS[b + slots + 1], ARGV[3])
  local nkeys, skeys = {}, {}
  for j = 1, slots do
    nkeys[j] = KEYS[b + j]
    skeys[j] = KEYS[b + slots + j]
  end
  table.insert(out, redis.call('PFCOUNT', unpack(nkeys)))
  table.insert(out, redis.call('PFCOUNT', unpack(skeys)))
  local released = redis.call('EXISTS', KEYS[b + 2 * slots + 2])
  local held = 0
  if released == 0 then held = redis.call('EXISTS', KEYS[b + 2 * slots + 1]) end
  table.insert(out, held)
  table.insert(out, released)
end
return out
`)

func (r *Redis) Observe(ctx context.Context, keys []Key, network, sender string) ([]KeyState, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	cur := r.set.slot(r.now())
	slots := slotsPerWindow + 1
	ks := make([]string, 0, len(keys)*(2*slots+2))
	for _, k := range keys {
		id := k.String()
		for j := 0; j < slots; j++ {
			ks = append(ks, r.prefix+"n:"+id+":"+strconv.FormatInt(cur-int64(j), 10))
		}
		for j := 0; j < slots; j++ {
			ks = append(ks, r.prefix+"s:"+id+":"+strconv.FormatInt(cur-int64(j), 10))
		}
		ks = append(ks, r.prefix+"h:"+id, r.prefix+"r:"+id)
	}
	life := r.set.Window + 2*r.set.Window/slotsPerWindow
	res, err := observeScript.Run(ctx, r.client, ks, network, sender, life.Milliseconds(), len(keys), slots).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	if len(res) != 4*len(keys) {
		return nil, fmt.Errorf("redis %s: %d values for %d keys", r.Addr(), len(res), len(keys))
	}
	out := make([]KeyState, len(keys))
	for i := range out {
		v := res[4*i:]
		out[i] = KeyState{Networks: v[0], Senders: v[1], Held: v[2] == 1, Released: v[3] == 1}
	}
	return out, nil
}

// recordTTL: a record outlives its fingerprint's last copy by this long.
func (r *Redis) recordTTL() time.Duration { return r.set.Hold + r.set.Window + releaseFor }

// suspectScript: KEYS: the index sorted set, then per fingerprint key
// its record pointer and its hold key. ARGV: the new record's id, now
// (unix ms), networks, senders, held (0/1), refresh (0/1), name, kind,
// size, the record's ttl ms, the hold ms, maxRecords, then the keys'
// ids. The record that holds one of the keys is updated and takes the
// others; else a new one is made. Returns {id, created}.
var suspectScript = redis.NewScript(`
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #'records')
local n = (#KEYS - 1) / 2
local id = nil
for i = 1, n do
  local r = redis.call('GET', KEYS[1 + i])
  if r and redis.call('EXISTS', prefix .. 'rec:' .. r) == 1 then id = r break end
end
local created = 0
if not id then
  id = ARGV[1]
  created = 1
  redis.call('HSET', prefix .. 'rec:' .. id, 'id', id, 'first', ARGV[2], 'keys', '', 'name', ARGV[7], 'kind', ARGV[8], 'size', ARGV[9], 'held', 0, 'networks', 0, 'senders', 0)
end
local rec = prefix .. 'rec:' .. id
local keys = redis.call('HGET', rec, 'keys')
for i = 1, n do
  local k = ARGV[12 + i]
  if redis.call('GET', KEYS[1 + i]) ~= id then
    redis.call('SET', KEYS[1 + i], id, 'PX', ARGV[10])
    keys = keys .. ' ' .. k
  else
    redis.call('PEXPIRE', KEYS[1 + i], ARGV[10])
  end
  if ARGV[6] == '1' then redis.call('SET', KEYS[1 + n + i], '1', 'PX', ARGV[11]) end
end
redis.call('HSET', rec, 'keys', keys, 'last', ARGV[2])
if tonumber(redis.call('HGET', rec, 'networks')) < tonumber(ARGV[3]) then redis.call('HSET', rec, 'networks', ARGV[3]) end
if tonumber(redis.call('HGET', rec, 'senders')) < tonumber(ARGV[4]) then redis.call('HSET', rec, 'senders', ARGV[4]) end
if ARGV[5] == '1' then redis.call('HINCRBY', rec, 'held', 1) end
redis.call('PEXPIRE', rec, ARGV[10])
redis.call('ZADD', KEYS[1], ARGV[2], id)
local c = redis.call('ZCARD', KEYS[1])
if c > tonumber(ARGV[12]) then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, c - tonumber(ARGV[12]) - 1) end
return {id, created}
`)

func (r *Redis) Suspect(ctx context.Context, s Sighting) (string, bool, error) {
	ks := []string{r.prefix + "records"}
	ids := make([]any, 0, len(s.Keys))
	for _, k := range s.Keys {
		ks = append(ks, r.prefix+"k2r:"+k.String())
		ids = append(ids, k.String())
	}
	for _, k := range s.Keys {
		ks = append(ks, r.prefix+"h:"+k.String())
	}
	flag := func(b bool) int {
		if b {
			return 1
		}
		return 0
	}
	args := append([]any{s.ID.String(), r.now().UnixMilli(), s.Networks, s.Senders, flag(s.Held), flag(s.Refresh), s.Name, s.Kind, s.Size,
		r.recordTTL().Milliseconds(), r.set.Hold.Milliseconds(), maxRecords}, ids...)
	res, err := suspectScript.Run(ctx, r.client, ks, args...).Slice()
	if err != nil {
		return "", false, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("redis %s: unexpected answer %v", r.Addr(), res)
	}
	// The id goes into the refusal's text and the samples' header: only
	// a fingerprint id, as the script writes them, is taken.
	id, _ := res[0].(string)
	created, _ := res[1].(int64)
	if _, err := ParseKey(id); err != nil {
		return "", false, fmt.Errorf("redis %s: record id: %w", r.Addr(), err)
	}
	return id, created == 1, nil
}

func (r *Redis) List(ctx context.Context) ([]Record, error) {
	ids, err := r.client.ZRevRange(ctx, r.prefix+"records", 0, maxRecords-1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	pipe := r.client.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, r.prefix+"rec:"+id)
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("redis %s: %w", r.Addr(), err)
		}
	}
	var out []Record
	for _, c := range cmds {
		h := c.Val()
		if h["id"] == "" {
			continue // expired
		}
		num := func(k string) int64 { n, _ := strconv.ParseInt(h[k], 10, 64); return n }
		out = append(out, Record{ID: h["id"], Keys: strings.Fields(h["keys"]), FirstSeen: time.UnixMilli(num("first")),
			LastSeen: time.UnixMilli(num("last")), Networks: num("networks"), Senders: num("senders"), Held: num("held"),
			Name: h["name"], Kind: h["kind"], Size: num("size"), Released: h["released"] == "1"})
	}
	sortRecords(out)
	return out, nil
}

func (r *Redis) Release(ctx context.Context, id string) (bool, error) {
	if _, err := ParseKey(id); err != nil {
		return false, err
	}
	rec := r.prefix + "rec:" + id
	keys, err := r.client.HGet(ctx, rec, "keys").Result()
	if err == redis.Nil {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	pipe := r.client.TxPipeline()
	for _, k := range strings.Fields(keys) {
		if _, err := ParseKey(k); err != nil {
			continue
		}
		pipe.Set(ctx, r.prefix+"r:"+k, "1", releaseFor)
		pipe.Del(ctx, r.prefix+"h:"+k)
	}
	pipe.PExpire(ctx, rec, releaseFor)
	pipe.HSet(ctx, rec, "released", "1")
	if _, err := pipe.Exec(ctx); err != nil {
		return false, fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	return true, nil
}
