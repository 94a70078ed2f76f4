package upstreams

import (
	"errors"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams/ionapi"
)

// ionapiKeys maps the entry keys an .ionapi file fills to the file's keys,
// for "overrides" messages.
var ionapiKeys = []struct{ entry, file string }{
	{"token_url", "pu+ot"}, {"auth_url", "pu+oa"}, {"revoke_url", "pu+or"},
	{"client_id", "ci"}, {"client_secret", "cs"}, {"username", "saak"}, {"password", "sask"},
}

// ionapi fills an entry from its ionapi_file: the keys the entry does not
// set itself. It runs before defaults, so that the grant a file implies
// (password with saak/sask, else client_credentials) is the default. No
// value of the file reaches a problem: they are secrets.
func (d *decoder) ionapi(name string, o *OAuth2) {
	if o.IonAPIFile == "" {
		return
	}
	p := at(o.Pos, "ionapi_file")
	path := "oauth2." + name + ".ionapi_file"
	data, err := d.res.readFile(o.IonAPIFile, maxFileRef)
	if err != nil {
		d.addAt(p, path, "%s: %v", o.IonAPIFile, unwrapPathError(err))
		d.unfilled("oauth2." + name)
		return
	}
	f, err := ionapi.Parse(data)
	if err != nil {
		d.unfilled("oauth2." + name)
		var msgs []string
		for _, e := range flatten(err) {
			msgs = append(msgs, e.Error())
		}
		d.addAt(p, path, "%s: %s", o.IonAPIFile, strings.Join(msgs, "; "))
		return
	}
	set := func(key string) bool { _, ok := o.Pos[key]; return ok }
	fill := func(key string, isSet bool, apply func()) {
		if !isSet {
			apply()
			return
		}
		for _, k := range ionapiKeys {
			if k.entry == key {
				d.warnAt(o.Pos[key], "oauth2."+name+"."+key, "set here, so it overrides the file's %s", k.file)
			}
		}
	}
	url := func(dst *URL, s string) func() {
		return func() {
			if s != "" {
				dst.UnmarshalText([]byte(s))
			}
		}
	}
	fill("token_url", set("token_url"), url(&o.TokenURL, f.TokenURL()))
	if f.AuthorizePath != "" {
		fill("auth_url", set("auth_url"), url(&o.AuthURL, f.AuthorizeURL()))
	}
	if f.RevokePath != "" {
		fill("revoke_url", set("revoke_url"), url(&o.RevokeURL, f.RevokeURL()))
	}
	fill("client_id", set("client_id"), func() { o.ClientID = f.ClientID })
	if f.ClientSecret != "" {
		fill("client_secret", set("client_secret"), func() { o.ClientSecret = Secret{Secret: f.ClientSecret} })
	}
	if f.ServiceAccount() {
		if !set("grant_type") {
			o.GrantType = tokencache.GrantPassword
		}
		if o.GrantType == tokencache.GrantPassword {
			fill("username", set("username"), func() { o.Username = f.AccessKey.Reveal() })
			fill("password", set("password"), func() { o.Password = Secret{Secret: f.SecretKey} })
		}
	}
}

// unfilled says that the keys a broken file would have filled are not
// missing: the file's problem says why.
func (d *decoder) unfilled(path string) {
	if d.noMissing == nil {
		d.noMissing = map[string]bool{}
	}
	d.noMissing[path] = true
}

// flatten lists the problems of an ionapi error, joined or not.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// unwrapPathError drops the path a *PathError repeats.
func unwrapPathError(err error) error {
	var pe interface{ Unwrap() error }
	if errors.As(err, &pe) && strings.Contains(err.Error(), ": ") {
		if inner := errors.Unwrap(err); inner != nil {
			return inner
		}
	}
	return err
}
