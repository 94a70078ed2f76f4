package upstreams

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"reflect"
	"slices"
	"strings"
	"time"
)

// fingerprint is the identity of an oauth2 entry's effective settings: a
// SHA-256 over every setting, secrets included as their own SHA-256 (so a
// rotated secret file changes it, and the fingerprint reveals nothing a
// secret's digest would not). The entry's name is not part of it.
func (o *OAuth2) fingerprint() string {
	h := sha256.New()
	writeValue(h, reflect.ValueOf(*o))
	return hex.EncodeToString(h.Sum(nil))
}

var (
	urlType      = reflect.TypeFor[URL]()
	proxyURLType = reflect.TypeFor[ProxyURL]()
)

// writeValue writes a canonical encoding of v to h: fields by name, maps
// by sorted key, secrets as digests. Positions and names are skipped.
func writeValue(h hash.Hash, v reflect.Value) {
	switch t := v.Type(); {
	case t == secretType:
		sum := sha256.Sum256([]byte(v.Interface().(Secret).Reveal()))
		fmt.Fprintf(h, "secret:%x;", sum)
		return
	case t == urlType:
		fmt.Fprintf(h, "url:%q;", v.Interface().(URL).String())
		return
	case t == proxyURLType:
		u := v.Interface().(ProxyURL).URL()
		var s string
		if u != nil {
			s = u.String()
		}
		sum := sha256.Sum256([]byte(s))
		fmt.Fprintf(h, "proxy:%x;", sum)
		return
	case t == positionsType:
		return
	case t == durationType:
		fmt.Fprintf(h, "%d;", time.Duration(v.Int()))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Name == "Name" {
				continue
			}
			fmt.Fprintf(h, "%s=", f.Name)
			writeValue(h, v.Field(i))
		}
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int {
			return strings.Compare(fmt.Sprint(a.Interface()), fmt.Sprint(b.Interface()))
		})
		fmt.Fprintf(h, "map%d{", len(keys))
		for _, k := range keys {
			fmt.Fprintf(h, "%q:", fmt.Sprint(k.Interface()))
			writeValue(h, v.MapIndex(k))
		}
		h.Write([]byte("}"))
	case reflect.Slice:
		fmt.Fprintf(h, "list%d[", v.Len())
		for i := range v.Len() {
			writeValue(h, v.Index(i))
		}
		h.Write([]byte("]"))
	case reflect.Pointer:
		if v.IsNil() {
			h.Write([]byte("nil;"))
			return
		}
		writeValue(h, v.Elem())
	default:
		fmt.Fprintf(h, "%#v;", v.Interface())
	}
}
