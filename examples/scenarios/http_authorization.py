# An HTTP filter that asks a remote authorization service whether each
# request may go through. The service's URL is the option
# "AuthorizationService" of Orthanc's configuration; it receives a JSON
# description of the request and answers {"granted": true/false}.
import json
import urllib.error
import urllib.request

import orthanc

AUTHORIZATION_SERVICE = json.loads(orthanc.GetConfiguration())['AuthorizationService']
METHODS = {
    orthanc.HttpMethod.GET: 'GET',
    orthanc.HttpMethod.POST: 'POST',
    orthanc.HttpMethod.PUT: 'PUT',
    orthanc.HttpMethod.DELETE: 'DELETE',
}


def Filter(uri, **request):
    query = {
        'uri': uri,
        'method': METHODS.get(request['method'], 'OTHER'),
        'ip': request['ip'],
        'token': request['headers'].get('authorization', ''),
        'get': request.get('get', {}),
    }
    http = urllib.request.Request(AUTHORIZATION_SERVICE, data=json.dumps(query).encode('utf-8'),
                                  headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(http, timeout=10) as answer:
            return json.loads(answer.read()).get('granted') is True
    except urllib.error.HTTPError:
        return False


orthanc.RegisterIncomingHttpRequestFilter(Filter)
