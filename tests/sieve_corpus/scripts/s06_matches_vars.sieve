require ["fileinto", "variables"];
if header :matches "subject" "[*] *" { fileinto "List-${1}"; stop; }
if header :matches "from" "*<*@*>" { fileinto "From-${3}"; }
