(function(){
var form=document.getElementById('filters');if(!form)return;form.hidden=false;
function v(id){return document.getElementById(id).value;}
function apply(){
var fam=v('f-family'),feat=v('f-feature'),plat=v('f-platform'),st=v('f-status'),grp=feat.split(':')[0];
function rowOk(tr){return (!plat||tr.dataset.platform===plat)&&(!fam||(' '+tr.dataset.families+' ').indexOf(' '+fam+' ')>=0);}
function match(el){var s=el.dataset.status||'';return !st||s===st||(st==='regression'&&el.classList.contains('regression'));}
document.querySelectorAll('section.feature').forEach(function(sec){
var anyRow=false;
sec.querySelectorAll('tbody tr').forEach(function(tr){
var ok=rowOk(tr),hits=0;
tr.querySelectorAll('td.c').forEach(function(td){
var m=match(td);td.classList.toggle('filtered',!m);if(m&&td.dataset.status)hits++;});
if(st&&!hits)ok=false;tr.hidden=!ok;if(ok)anyRow=true;});
sec.hidden=!anyRow||(feat!==''&&sec.dataset.feature!==feat);});
document.querySelectorAll('div.ov-platform').forEach(function(box){
var anyRow=false;
box.querySelectorAll('tbody tr').forEach(function(tr){
var ok=rowOk(tr),hits=0;
tr.querySelectorAll('td.g').forEach(function(td){
var inGroup=!feat||td.dataset.group===grp;td.classList.toggle('dim',!inGroup);
td.querySelectorAll('.chip').forEach(function(ch){
var m=inGroup&&match(ch);ch.classList.toggle('off',!m);if(m&&ch.dataset.status)hits++;});});
if(st&&!hits)ok=false;tr.hidden=!ok;if(ok)anyRow=true;});
box.hidden=!anyRow;});
var d=document.getElementById('features-skipped');
if(d){var shown=d.querySelectorAll('section.feature:not([hidden])').length;d.hidden=!shown;
if(shown&&(feat||st==='unsupported'||st==='not_applicable'))d.open=true;}
}
form.addEventListener('change',apply);
form.addEventListener('reset',function(){setTimeout(apply,0);});
apply();
})();
